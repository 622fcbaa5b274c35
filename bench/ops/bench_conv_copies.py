"""K perturbed copies of a small CNN in one batched pass (MultiCopyConv) vs a loop of K separate models,
and LoRA copies vs the frozen base.

CPU section (always; one torch thread unless --threads), two small CNNs made of Conv2d + ReLU with a
global-average-pool + Linear head, m images per copy:
  digits-like  1x8x8:   conv 1->8 3x3 p1, conv 8->16 3x3 p1, head 16->10
  CIFAR-like   3x32x32: conv 3->16 3x3 p1, conv 16->32 3x3 s2 p1, conv 32->32 3x3 p1, head 32->10
  (i)   training step (zero_grad, forward, per-copy cross-entropy, backward, SGD step) of K full-rank
        copies in one batched model (every conv a MultiCopyConv, the head a MultiLoRALinear, rank
        'full') vs K separate nn.Module models stepped one after another: goal >= 3x at K = 64;
  (ii)  forward + backward (to the input, so both pay dX through every layer) of LoRA rank 8 copies
        on every conv vs the frozen base model alone on the same K*m batch: goal <= 1.5x;
  (iii) per conv layer of (i), forward + backward of the full-rank copies with the grouped-conv path
        vs the im2col + batched-GEMM path.
GPU section (--gpu; bf16, CUDA): ResNet-9-like convolutions (Conv + ReLU, no norm: 3->64, 64->128 +
pool, residual 2x 128->128, 128->256 + pool, 256->512 + pool, residual 2x 512->512, pool, Linear)
at 3x32x32 synthetic images, K = 100 full-rank copies with m images each: images/s of one batched
step vs K separate models stepped one after another (goal >= 10x). ``--smoke`` runs every section
with tiny sizes (the GPU section on the CPU in fp32 when no CUDA device is visible).

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/ops/bench_conv_copies.py [--repeats 7] [--K 64] [--m 8]
    PYTHONPATH=. python bench/ops/bench_conv_copies.py --gpu            # on a CUDA machine
    PYTHONPATH=. python bench/ops/bench_conv_copies.py --smoke          # seconds, any machine
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness
from harness import compare, machine, print_table, record

from daunce_fast.lora.conv import MultiCopyConv
from daunce_fast.lora.layer import MultiLoRALinear


def small_cnn(shape: str, scale: int = 1) -> nn.Sequential:
    """The two CPU models (channel counts divided by ``scale`` for --smoke)."""
    if shape == "digits":
        c1, c2 = max(1, 8 // scale), max(1, 16 // scale)
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c2, 10),
        )
    c1, c2 = max(1, 16 // scale), max(1, 32 // scale)
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c2, c2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, 10),
    )


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + F.relu(self.b(F.relu(self.a(x))))


def resnet9_convs(width: int = 64) -> nn.Sequential:
    """ResNet-9's convolutions (Myrtle layout) without normalisation: copies of it stay independent."""
    w = width

    def block(ci, co, pool):
        layers = [nn.Conv2d(ci, co, 3, padding=1), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(
        *block(3, w, False),
        *block(w, 2 * w, True),
        Residual(2 * w),
        *block(2 * w, 4 * w, True),
        *block(4 * w, 8 * w, True),
        Residual(8 * w),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, 10),
    )


def to_copies(model: nn.Module, K: int, rank, adapter_dtype=None, seed: int = 0) -> list[nn.Parameter]:
    """Replace every Conv (and, for rank 'full', every Linear) of ``model`` in place by its K-copy layer;
    return the adapter parameters. (The library's attach does this for users; here it is spelled out.)"""
    params = []
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, nn.Conv2d):
                new = MultiCopyConv(child, K, rank, 2.0 * (rank if rank != "full" else 1), name=full, seed=seed)
            elif isinstance(child, nn.Linear) and rank == "full":
                new = MultiLoRALinear(child, K, "full", 1.0, name=full)
            else:
                continue
            if adapter_dtype is not None:
                new.to(adapter_dtype)
            setattr(mod, cname, new)
            params += new.adapter_parameters()
    return params


def per_copy_loss(logits: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """Sum over copies of each copy's mean cross-entropy: copy k's gradient is its own model's."""
    return F.cross_entropy(logits.float(), y, reduction="none").view(K, -1).mean(1).sum()


def step_fns(base: nn.Module, K: int, x: torch.Tensor, y: torch.Tensor, adapter_dtype=None, backend=None) -> dict:
    """{"batched": one step of K full-rank copies, "loop": K separate models stepped one by one}."""
    m = x.shape[0] // K
    batched = copy.deepcopy(base)
    params = to_copies(batched, K, "full", adapter_dtype)
    for mod in batched.modules():
        if isinstance(mod, MultiCopyConv):
            mod.backend = backend
    opt = torch.optim.SGD(params, lr=1e-3)
    models = [copy.deepcopy(base).requires_grad_(True) for _ in range(K)]
    opts = [torch.optim.SGD(md.parameters(), lr=1e-3) for md in models]

    def batched_step():
        opt.zero_grad(set_to_none=True)
        per_copy_loss(batched(x), y, K).backward()
        opt.step()

    def loop_step():
        for k, (md, o) in enumerate(zip(models, opts)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(md(x[k * m : (k + 1) * m]).float(), y[k * m : (k + 1) * m]).backward()
            o.step()

    return {"batched": batched_step, "loop": loop_step}


def lora_arith_fraction(model: nn.Module, chw: tuple, r: int) -> float:
    """LoRA's extra multiply-adds over the frozen convs, forward + backward: A (C_in -> r, the layer's
    kernel) and B (r -> C_out, 1x1) cost 3 products each (fwd, dX, dW) against the base's 2 (fwd, dX)."""
    base_macs = lora_macs = 0
    h = torch.zeros(1, *chw)
    for mod in model:
        if isinstance(mod, nn.Conv2d):
            out = mod(h)
            k, L = mod.kernel_size[0] * mod.kernel_size[1], out.shape[-1] * out.shape[-2]
            base_macs += 2 * mod.in_channels // mod.groups * mod.out_channels * k * L
            lora_macs += 3 * (mod.in_channels * r * k + r * mod.out_channels) * L
        with torch.no_grad():
            h = mod(h)
    return lora_macs / base_macs


def cpu_section(args):
    K, m, scale = (4, 2, 4) if args.smoke else (args.K, args.m, 1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for shape, chw in (("digits", (1, 8, 8)), ("cifar", (3, 32, 32))):
        torch.manual_seed(0)
        base = small_cnn(shape, scale).requires_grad_(False)
        x = torch.randn(K * m, *chw, generator=g)
        y = torch.randint(0, 10, (K * m,), generator=g)

        # (i) full-rank copies vs a loop of K models
        fns = step_fns(base, K, x, y)
        res = compare({"loop of K models": fns["loop"], "batched copies": fns["batched"]}, repeats=args.repeats)
        speed = res["loop of K models"]["median_s"] / res["batched copies"]["median_s"]
        for n, v in res.items():
            rows.append(_row(f"{shape} (i) step {n}", v, K * m, speedup=speed if n == "batched copies" else None))

        # (ii) LoRA rank 8 on every conv vs the frozen base, same K*m batch, fwd + bwd to the input
        lora_model = copy.deepcopy(base)
        lparams = to_copies(lora_model, K, 8)
        with torch.no_grad():
            for p in lparams[1::2]:  # B: nonzero so nothing is skipped
                p.normal_(std=0.01)
        xg = x.clone().requires_grad_()

        def base_fwd_bwd(xg=xg, base=base):
            (gx,) = torch.autograd.grad(base(xg).sum(), xg)

        def lora_fwd_bwd(xg=xg, lora_model=lora_model, lparams=lparams):
            torch.autograd.grad(lora_model(xg).sum(), [xg, *lparams])

        res = compare({"frozen base": base_fwd_bwd, "LoRA r=8 copies": lora_fwd_bwd}, repeats=args.repeats)
        frac = lora_arith_fraction(base, chw, 8)
        print(f"{shape}: LoRA r=8 arithmetic over the frozen convs: +{100 * frac:.0f}% (bound: {1 + frac:.2f}x)")
        for n, v in res.items():
            rows.append(_row(f"{shape} (ii) fwd+bwd {n}", v, K * m))

        # (iii) grouped conv vs im2col per conv layer of the full-rank copies
        h = x
        for i, mod in enumerate(base):
            if isinstance(mod, nn.Conv2d):
                lays = {be: MultiCopyConv(mod, K, "full", backend=be) for be in ("grouped", "im2col")}
                for lay in lays.values():
                    with torch.no_grad():
                        lay.delta_weight.normal_(std=0.01)
                hin = h.clone().requires_grad_()

                def run(lay, hin=hin):
                    out = lay(hin)
                    torch.autograd.grad(out, [hin, *lay.adapter_parameters()], torch.ones_like(out))

                res = compare(
                    {be: (lambda lay=lay: run(lay)) for be, lay in lays.items()},
                    repeats=args.repeats,
                )
                desc = f"{mod.in_channels}->{mod.out_channels} k{mod.kernel_size[0]} s{mod.stride[0]} @{h.shape[-1]}"
                for n, v in res.items():
                    rows.append(_row(f"{shape} (iii) conv{i} {desc} {n}", v, K * m))
            with torch.no_grad():
                h = mod(h)
    load = os.getloadavg()
    print(f"\nCPU: K={K} copies, m={m} images per copy; torch threads={torch.get_num_threads()}; load {load}")
    print_table(rows, ["case", "median_s", "min_s", "ratio", "speedup", "images/s"])
    if not args.smoke:
        record("conv_copies_cpu", rows)


def _row(case: str, v: dict, images: int, speedup=None) -> dict:
    return {
        "case": case,
        "median_s": v["median_s"],
        "min_s": v["min_s"],
        "ratio": v["ratio"],
        "speedup": speedup,
        "images/s": images / v["median_s"],
    }


def gpu_section(args):
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("\nGPU section skipped: no CUDA device visible (use --smoke to run it on the CPU with tiny sizes)")
        return
    dev = "cuda" if cuda else "cpu"
    dt = torch.bfloat16 if cuda else torch.float32
    K, m, width, side = (100, 16, 64, 32) if not args.smoke else (3, 2, 4, 8)
    torch.manual_seed(0)
    base = resnet9_convs(width).to(dev, dt).requires_grad_(False)
    x = torch.randn(K * m, 3, side, side, device=dev, dtype=dt)
    y = torch.randint(0, 10, (K * m,), device=dev)
    # bf16 adapters as the separate models' bf16 weights: the same arithmetic on both sides.
    fns = step_fns(base, K, x, y, adapter_dtype=dt)
    im2col = step_fns(base, K, x, y, adapter_dtype=dt, backend="im2col")["batched"]
    loop = "K separate models, one after another"
    res = compare(
        {loop: fns["loop"], "batched copies": fns["batched"], "batched copies (im2col)": im2col},
        warmup=1,
        repeats=max(2, args.repeats // 2),
    )
    speed = res[loop]["median_s"] / res["batched copies"]["median_s"]
    rows = [_row(n, v, K * m, speedup=res[loop]["median_s"] / v["median_s"]) for n, v in res.items()]
    print(f"\nGPU: ResNet-9 convs width {width} at 3x{side}x{side}, K={K} copies x {m} images, {dt}, {dev}")
    print(f"speed-up of the batched copies: {speed:.1f}x")
    print_table(rows, ["case", "median_s", "ratio", "speedup", "images/s"])
    if cuda and not args.smoke:
        record("conv_copies_gpu", rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--m", type=int, default=8, help="images per copy (CPU section)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU section)")
    ap.add_argument("--gpu", action="store_true", help="run the GPU section only")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; both sections; seconds")
    args = ap.parse_args()
    print(machine())
    if not args.gpu or args.smoke:
        torch.set_num_threads(args.threads)
        cpu_section(args)
    if args.gpu or args.smoke:
        gpu_section(args)


if __name__ == "__main__":
    main()
