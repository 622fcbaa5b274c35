"""Batched multi-LoRA training step vs its limit (the frozen base) and vs what users run (a loop of PEFT models).

CPU section (always): a Llama built from a config (hidden 256, 4 layers, 4 heads, MLP 1024, vocab
4096, sequence 64), K=32 adapters of rank 16 on all seven projections, 2 sequences per adapter:
  - base fwd+bwd: the frozen model over the same K*m rows, no LoRA; backward to the input
    embeddings (dX through every layer, no dW): the limit;
  - ours fwd+bwd (same inputs, embeddings requiring grad, so the same dX work plus LoRA);
  - ours step: a real training step from token ids (fwd, bwd, AdamW over all adapters);
  - PEFT loop: K PEFT LoRA models, each doing its own step on its 2 sequences, one after another.
GPU sections (only with CUDA, bf16): (a) one Llama-7B-shaped layer (d 4096, MLP 11008), K=100,
r=16, 512 tokens per adapter: our LoRA linears vs the bare frozen GEMMs, fwd+bwd; (b) a Llama with
hidden 2048 and 16 layers, K=100 adapters with one 256-token sequence each: our step vs the loop
of PEFT models.

    PYTHONPATH=. python bench/ops/bench_multilora.py [--repeats 5] [--skip-cpu] [--skip-gpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness
from harness import compare, machine, print_table, record

from daunce_fast import lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_llama(hidden, layers, heads, inter, vocab, dtype=torch.float32, device="cpu", seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=vocab,
        max_position_embeddings=512,
    )
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    model.train()  # dropout is 0 in Llama; train mode as a training step would be
    return model


def row_losses(logits, ids):
    """Per-sequence mean next-token CE: [rows]."""
    lp = logits[:, :-1].float()
    ce = F.cross_entropy(lp.reshape(-1, lp.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(ids.shape[0], -1).mean(1)


def lora_arith_fraction(hidden, inter, layers, vocab, r):
    """LoRA's extra FLOPs over the frozen model's fwd + dX-only bwd (linear layers and lm_head)."""
    lin = [(hidden, hidden)] * 4 + [(hidden, inter)] * 2 + [(inter, hidden)]
    base = layers * sum(a * b for a, b in lin) + hidden * vocab
    extra = layers * sum(r * (a + b) for a, b in lin)
    return 3 * extra / (2 * base)  # LoRA: 2 products fwd + 4 bwd; base: 1 fwd + 1 bwd (dX)


def compare_cpu(fns: dict, repeats: int) -> dict:
    """Interleaved repeats like harness.compare, timing wall clock and this process's CPU time.

    On a CPU shared with other jobs, wall time includes the time this process waits for a core;
    process CPU time does not (with one torch thread it is the work itself)."""
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return {
        k: {
            "wall_med": statistics.median(wall[k]),
            "wall_min": min(wall[k]),
            "cpu_med": statistics.median(cpu[k]),
            "cpu_min": min(cpu[k]),
        }
        for k in fns
    }


def cpu_section(args):
    K, m, T, r = 32, 2, 64, 16
    hidden, layers, heads, inter, vocab = 256, 4, 4, 1024, 4096
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (K * m, T))
    base = build_llama(hidden, layers, heads, inter, vocab)
    for p in base.parameters():
        p.requires_grad_(False)

    ours = copy.deepcopy(base)
    params = lora.attach(ours, K, r, 32.0, TARGETS, seed=0)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=args.fused_adamw)

    def base_fwd_bwd():
        emb = base.model.embed_tokens(ids).detach().requires_grad_()
        row_losses(base(inputs_embeds=emb).logits, ids).sum().backward()

    def ours_fwd_bwd():
        emb = ours.model.embed_tokens(ids).detach().requires_grad_()
        lora.per_adapter_loss(row_losses(ours(inputs_embeds=emb).logits, ids), K).backward()
        for p in params:
            p.grad = None

    def ours_step():
        opt.zero_grad(set_to_none=True)
        lora.per_adapter_loss(row_losses(ours(input_ids=ids).logits, ids), K).backward()
        opt.step()

    fns = {"base fwd+bwd (limit)": base_fwd_bwd, "ours fwd+bwd": ours_fwd_bwd, "ours step": ours_step}
    if not args.skip_peft:
        import peft

        models = []
        for k in range(K):
            pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=32, target_modules=TARGETS))
            ps = [p for p in pm.parameters() if p.requires_grad]
            models.append((pm, torch.optim.AdamW(ps, lr=1e-4, fused=args.fused_adamw), ids[k * m : (k + 1) * m]))

        def peft_loop():
            for pm, o, x in models:
                o.zero_grad(set_to_none=True)
                row_losses(pm(input_ids=x).logits, x).mean().backward()
                o.step()

        fns["PEFT loop (K models)"] = peft_loop
    res = compare_cpu(fns, args.repeats)
    base_case = res["base fwd+bwd (limit)"]
    rows = []
    for name, v in res.items():
        rows.append(
            {
                "case": name,
                **v,
                "x_base_wall": v["wall_med"] / base_case["wall_med"],
                "x_base_cpu": v["cpu_med"] / base_case["cpu_med"],
                "seq/s": K * m / v["wall_med"],
            }
        )
    if "PEFT loop (K models)" in res:
        p, o = res["PEFT loop (K models)"], res["ours step"]
        rows.append(
            {
                "case": "speed-up: PEFT loop / ours step",
                "x_base_wall": p["wall_med"] / o["wall_med"],
                "x_base_cpu": p["cpu_med"] / o["cpu_med"],
            }
        )
    frac = lora_arith_fraction(hidden, inter, layers, vocab, r)
    print(
        f"\nCPU: Llama h{hidden} L{layers} MLP {inter} vocab {vocab} seq {T}; K={K} r={r} m={m}; "
        f"torch threads={torch.get_num_threads()}; LoRA arithmetic over the frozen linears: +{100 * frac:.1f}%"
    )
    print_table(rows, ["case", "wall_med", "wall_min", "cpu_med", "cpu_min", "x_base_wall", "x_base_cpu", "seq/s"])
    record("multilora_cpu", rows)


def gpu_layer_section(args):
    dev, dt = "cuda", torch.bfloat16
    K, m, r, d, inter = 100, 512, 16, 4096, 11008
    torch.manual_seed(0)
    shapes = [(d, d)] * 4 + [(d, inter)] * 2 + [(inter, d)]
    bases = [torch.nn.Linear(a, b, bias=False, device=dev, dtype=dt).requires_grad_(False) for a, b in shapes]
    layers = {be: [lora.MultiLoRALinear(bl, K, r, 32.0, backend=be) for bl in bases] for be in ("torch", "triton")}
    for lays in layers.values():
        for lay in lays:
            with torch.no_grad():
                lay.lora_B.normal_(0, 0.01)
    xs = {a: torch.randn(K * m, a, device=dev, dtype=dt, requires_grad=True) for a in (d, inter)}
    gs = {b: torch.randn(K * m, b, device=dev, dtype=dt) for b in (d, inter)}

    def frozen():
        for (a, b), bl in zip(shapes, bases):
            y = bl(xs[a])
            (gx,) = torch.autograd.grad(y, xs[a], gs[b])

    def ours(be):
        def run():
            for (a, b), lay in zip(shapes, layers[be]):
                y = lay(xs[a])
                torch.autograd.grad(y, [xs[a], lay.lora_A, lay.lora_B], gs[b])

        return run

    res = compare(
        {
            "frozen GEMMs fwd+bwd(dX)": frozen,
            "ours torch path (cuBLAS+bmm)": ours("torch"),
            "ours Triton kernels": ours("triton"),
        },
        warmup=2,
        repeats=args.repeats,
    )
    rows = [
        {"case": n, "median_s": v["median_s"], "ratio": v["ratio"], "tokens/s": K * m / v["median_s"]}
        for n, v in res.items()
    ]
    print(f"\nGPU (a): Llama-7B-shaped layer (7 projections), K={K}, r={r}, {m} tokens/adapter, bf16")
    print_table(rows, ["case", "median_s", "ratio", "tokens/s"])
    record("multilora_gpu_layer", rows)


def gpu_model_section(args):
    import peft

    dev, dt = "cuda", torch.bfloat16
    K, T, r = 100, 256, 16
    base = build_llama(2048, 16, 16, 5632, 32000, dtype=dt, device=dev)
    for p in base.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 32000, (K, T), device=dev)
    ours = copy.deepcopy(base)
    params = lora.attach(ours, K, r, 32.0, TARGETS, seed=0)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def ours_step():
        opt.zero_grad(set_to_none=True)
        lora.per_adapter_loss(row_losses(ours(input_ids=ids).logits, ids), K).backward()
        opt.step()

    # One PEFT model with K named adapters, activated one after another: the PEFT loop's arithmetic
    # and memory traffic without K copies of the base in memory.
    pm = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=32, target_modules=TARGETS), adapter_name="a0")
    for k in range(1, K):
        pm.add_adapter(f"a{k}", peft.LoraConfig(r=r, lora_alpha=32, target_modules=TARGETS))
    opts = []
    for k in range(K):
        pm.set_adapter(f"a{k}")
        opts.append(torch.optim.AdamW([p for n, p in pm.named_parameters() if f".a{k}." in n], lr=1e-4, fused=True))

    def peft_loop():
        for k in range(K):
            pm.set_adapter(f"a{k}")
            opts[k].zero_grad(set_to_none=True)
            row_losses(pm(input_ids=ids[k : k + 1]).logits, ids[k : k + 1]).mean().backward()
            opts[k].step()

    res = compare(
        {"PEFT loop (K adapters, one at a time)": peft_loop, "ours step": ours_step},
        warmup=1,
        repeats=max(2, args.repeats // 2),
    )
    rows = [
        {"case": n, "median_s": v["median_s"], "ratio": v["ratio"], "tokens/s": K * T / v["median_s"]}
        for n, v in res.items()
    ]
    print(
        f"\nGPU (b): Llama h2048 L16, K={K} adapters x one {T}-token sequence, r={r}, bf16: "
        f"speed-up {1 / res['ours step']['ratio']:.1f}x"
    )
    print_table(rows, ["case", "median_s", "ratio", "tokens/s"])
    record("multilora_gpu_model", rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--skip-peft", action="store_true", help="CPU: leave out the PEFT loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the CPU section (0: torch's default)")
    ap.add_argument("--fused-adamw", action="store_true", help="use AdamW(fused=True) on the CPU section")
    args = ap.parse_args()
    print(machine())
    if not args.skip_cpu:
        if args.threads:
            torch.set_num_threads(args.threads)
        cpu_section(args)
    if not args.skip_gpu:
        if torch.cuda.is_available():
            gpu_layer_section(args)
            gpu_model_section(args)
        else:
            print("\nGPU sections skipped: no CUDA device visible")


if __name__ == "__main__":
    main()
