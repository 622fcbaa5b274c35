"""GPU section of bench/quality/lm_backdoor.py (runs only where CUDA is present): DAUNCE throughput on a
0.5B-parameter Llama built from a config (random weights), K = 100 adapters, 512-token sequences,
versus the reference way (PEFT LoRA models trained one after another, each saved and reloaded to
record the losses), extrapolated from a few models to K.

Prints tokens/s of training (K * steps * batch * T / s) and of loss recording (K * N * T / s),
peak GPU memory of each, and the speed-up.
"""

from __future__ import annotations

import tempfile
import time

import torch

T = 512
HIDDEN, INTER, LAYERS, HEADS, VOCAB = 1024, 4096, 24, 16, 32000  # ≈ 0.47B parameters
K, STEPS, BATCH, N_REC, RANK, ALPHA, LR = 100, 30, 4, 64, 64, 16.0, 3e-4
MLP = ["gate_proj", "up_proj", "down_proj"]


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, VOCAB, (n, T), generator=g)
    labels = ids.clone()
    labels[:, : T // 2] = -100  # loss on the second half ("response") only
    return torch.utils.data.TensorDataset(ids, labels), ids, labels


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _model():
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=T,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


def _daunce(base, ids, labels, chunk):
    from daunce_fast.daunce import Daunce

    train = _Dicts(ids, labels)
    d = Daunce(
        base,
        num_models=K,
        rank=RANK,
        alpha=ALPHA,
        optimizer="adamw",
        lr=LR,
        steps=STEPS,
        batch_size=BATCH,
        ratio=0.5,
        adapter_chunk=chunk,
        row_budget=chunk * BATCH * T,
        extra={"warmup": 0.03},
        workdir=tempfile.mkdtemp(prefix="lm_gpu_"),
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    d.fit(train)  # trains K models and records the N_REC training rows under each
    torch.cuda.synchronize()
    t_fit = time.perf_counter() - t0
    mem_fit = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    d.record(_Dicts(ids.flip(0), labels.flip(0)), "again")  # the same amount of recording alone
    torch.cuda.synchronize()
    t_rec = time.perf_counter() - t0
    return t_fit - t_rec, t_rec, mem_fit, torch.cuda.max_memory_allocated()


def _peft(base, ids, labels, models=2):
    import peft

    per_train, per_rec = [], []
    torch.cuda.reset_peak_memory_stats()
    for m in range(models):
        wd = tempfile.mkdtemp(prefix="lm_gpu_peft_")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=MLP, lora_dropout=0.0)
        pm = peft.get_peft_model(base, cfg)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR)
        g = torch.Generator().manual_seed(m)
        sub = torch.randperm(len(ids), generator=g)[: len(ids) // 2]
        pm.train()
        for _ in range(STEPS):
            idx = sub[torch.randint(0, len(sub), (BATCH,), generator=g)]
            out = pm(input_ids=ids[idx].cuda(), labels=labels[idx].cuda())
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        pm.save_pretrained(wd)
        base = pm.unload()  # back to the plain base model
        del pm, opt
        torch.cuda.synchronize()
        per_train.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pm = peft.PeftModel.from_pretrained(base, wd).eval()
        with torch.no_grad():
            for j in range(0, len(ids), BATCH):
                x, y = ids[j : j + BATCH].cuda(), labels[j : j + BATCH].cuda()
                logits = pm(input_ids=x).logits[:, :-1].float()
                tok = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, VOCAB), y[:, 1:].reshape(-1), reduction="none", ignore_index=-100
                ).view(len(x), -1)
                (tok.sum(1) / (y[:, 1:] != -100).sum(1)).cpu()
        base = pm.unload()
        del pm
        torch.cuda.synchronize()
        per_rec.append(time.perf_counter() - t0)
    return min(per_train), min(per_rec), torch.cuda.max_memory_allocated()


def run_gpu() -> int:
    if not torch.cuda.is_available():
        print("--gpu: CUDA is not available here; nothing run")
        return 0
    base = _model()
    print(
        f"Llama from a config: {sum(p.numel() for p in base.parameters()) / 1e9:.2f}B parameters, bf16, "
        f"T={T}, K={K}, {STEPS} steps x batch {BATCH}, rank {RANK}, recording N={N_REC}; {torch.cuda.get_device_name()}"
    )
    _, ids, labels = _data(N_REC, 0)
    train_tok = K * STEPS * BATCH * T
    rec_tok = K * N_REC * T
    res = None
    for chunk in (25, 10, 5, 2):
        try:
            res = _daunce(base, ids, labels, chunk)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"  adapter_chunk={chunk}: out of memory, trying a smaller chunk")
    if res is None:
        print("DAUNCE: out of memory at every chunk size")
        return 1
    t_tr, t_rec, m_fit, m_rec = res
    print(
        f"DAUNCE (adapter_chunk={chunk}): training {train_tok / t_tr:,.0f} tok/s ({t_tr:.1f} s), recording "
        f"{rec_tok / t_rec:,.0f} tok/s ({t_rec:.1f} s); peak memory fit {m_fit / 2**30:.1f} GiB, record {m_rec / 2**30:.1f} GiB"
    )
    p_tr, p_rec, p_mem = _peft(base, ids, labels)
    pt, pr = p_tr * K, p_rec * K
    print(
        f"PEFT loop (per model: train {p_tr:.2f} s, reload+record {p_rec:.2f} s; x{K}): training "
        f"{train_tok / pt:,.0f} tok/s, recording {rec_tok / pr:,.0f} tok/s; peak memory {p_mem / 2**30:.1f} GiB"
    )
    print(f"speed-up: training {pt / t_tr:.1f}x, recording {pr / t_rec:.1f}x, total {(pt + pr) / (t_tr + t_rec):.1f}x")
    return 0
