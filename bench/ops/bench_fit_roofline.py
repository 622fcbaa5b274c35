"""A roofline for ``Daunce.fit``: the GEMM FLOPs the fit needs, the machine's measured GEMM speed at
the fit's own shapes, and the fit's time as a multiple of that limit, phase by phase (issue 17).

Cases:
  digits (default): the MLP 64-64-10 θ0 of bench/ops/bench_pipeline.py (daunce_fast.demos.tasks),
      Daunce defaults (full-rank deltas on every Linear, Adam, lr 1e-3, 10 epochs, batch 128,
      ratio 0.5), K = --K (2048), recording the test set; --quick: K = 64.
  --lm: the LM fit of bench/quality/lm_backdoor.py (the small Llama of daunce_fast.demos.lm_backdoor,
      400 training pairs, 16 triggered + 16 clean queries recorded, LM defaults) at K = 64; random
      weights (the GEMMs do not depend on them). Skipped when transformers is missing.
  --gpu: on CUDA only: digits at K = 2048, and a ~0.5B-parameter Llama from a config (bf16,
      hidden 1024, 24 layers, intermediate 2816, vocabulary 32000, random weights) on 256 synthetic
      sequences of 64 tokens at K = 100 with the LM defaults; then the --cnn case at K = 512.
  --cnn (instead of the others): the digits CNN of daunce_fast.evaluation.groundtruth_cnn (θ0 trained
      with CNNRecipe: 20 epochs Adam 2e-3), head-only full-rank copies (target "8", the Linear
      512->10 after a frozen Conv-BN-ReLU x2 + MaxPool prefix), lr 1e-3, 10 epochs, batch 128,
      K = --cnn-K (512), all 1437 training / 360 test images. Needed FLOPs with the shared prefix
      (cnn_fit_flops: the prefix's convolutions once per training example for the cache and once
      per recorded example, the head's forward + weight-grad for K copies; the FLOPs without sharing
      printed for reference), the limit from F.conv2d and bmm at the pipeline's shapes timed alone;
      fits with the shared prefix on and off (daunce_fast.lora.shared_prefix.ENABLED = False)
      interleaved, both against the same limit; the FLOP formula checked against FlopCounterMode
      (check_cnn_flop_formula). The off fit runs the prefix on every row (about 6 minutes at K = 512
      on one loaded core): --off-repeats limits its rounds.

Per case and thread count, --repeats rounds, each round one fit and then every GEMM shape of the fit
timed alone (interleaved, so load hits both alike); medians over the rounds:
  - needed GEMM FLOPs per phase (training, recording, base pass), counted by formula
    (mlp_fit_flops / llama_fit_gemms);
  - limit = sum over the fit's GEMM calls of the measured time of that call's shape alone
    (torch.mm, or torch.bmm where the fit batches over copies) = FLOPs / measured throughput;
  - the fit's time per phase (daunce_fast.daunce.pipeline's train_chunk and record_chunk and the
    head's base_tables wrapped from here; overhead = the rest of fit) and its multiple of the limit.
Also: the digits FLOP formula checked against torch.utils.flop_counter.FlopCounterMode on a tiny fit
(an assertion), and a torch.profiler table (top 15 ops by self CPU time) of one training chunk (a separate fit of
one chunk's K, its recording replaced by zeros).
Rows go to bench/out/results.jsonl (bench/harness.py's record); a markdown table is printed.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/ops/bench_fit_roofline.py --threads 1 [--lm]
    PYTHONPATH=$PWD python bench/ops/bench_fit_roofline.py --threads 1,2 --repeats 3 [--K 2048] [--quick]
    PYTHONPATH=$PWD python bench/ops/bench_fit_roofline.py --gpu        # on a CUDA machine only
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/ops/bench_fit_roofline.py --cnn --threads 1 [--cnn-K 512]
        [--repeats 3] [--off-repeats 1]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness
from harness import machine, record

import daunce_fast.daunce.pipeline as pipeline
from daunce_fast.daunce import Daunce
from daunce_fast.daunce.trainer import ChunkPlan

PHASES = ("training", "recording", "base pass")


# ------------------------------------------------------------------------------------------ counting
@dataclass(frozen=True)
class Gemm:
    """One GEMM shape: ``batch`` products [m, k] x [k, n] (batch 1: torch.mm, else torch.bmm); ``ta``/``tb``:
    the operand is a transposed view, as the fit passes it; ``dtype``: the dtype it runs in."""

    batch: int
    m: int
    k: int
    n: int
    ta: bool = False
    tb: bool = False
    dtype: str = "float32"

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


@dataclass(frozen=True)
class Conv:
    """One 2-d convolution call (forward only): input [batch, in_ch, h, w], weight [out_ch, in_ch/groups,
    kh, kw], output [batch, out_ch, oh, ow]; FLOPs 2 * out_elems * in_ch/groups * kh * kw (what
    torch.utils.flop_counter counts for aten.convolution)."""

    batch: int
    in_ch: int
    h: int
    w: int
    out_ch: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    groups: int = 1
    dtype: str = "float32"

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.out_ch * self.oh * self.ow * (self.in_ch // self.groups) * self.kh * self.kw

    def at(self, batch: int) -> Conv:
        return Conv(batch, *[getattr(self, f) for f in self.__dataclass_fields__ if f != "batch"])


def mlp_fit_flops(dims: list[int], K: int, rows_per_model: int, n_train: int, n_test: int) -> dict:
    """GEMM FLOPs a DAUNCE fit of an MLP with full-rank deltas on every Linear needs, per phase.

    dims = [d_0, ..., d_L] (Linear l maps d_{l-1} -> d_l), S = sum_l d_{l-1} * d_l, R = the rows one
    model trains on (sum of its batch sizes over all steps: epochs x subset size). Per Linear and
    row: forward 2 * in * out, backward weight-grad 2 * in * out and input-grad 2 * in * out except
    for the first Linear (its input, the data, needs no gradient). So:

        training  = K * R * (6 * S - 2 * d_0 * d_1)
        recording = 2 * K * (N_train + N_test) * S        (every example under every copy)
        base pass = 2 * N_train * S                        (θ0's outputs over the training set)

    Bias adds, activations, the loss and the optimiser are not GEMMs and are not counted.
    """
    S = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return {
        "training": K * rows_per_model * (6 * S - 2 * dims[0] * dims[1]),
        "recording": 2 * K * (n_train + n_test) * S,
        "base pass": 2 * n_train * S,
    }


def _blocks(n: int, block: int) -> list[int]:
    return [min(block, n - j) for j in range(0, n, block)]


def mlp_fit_gemms(dims, chunks, step_rows, rec_sizes, n_train, row_budget) -> dict:
    """{phase: Counter({Gemm: calls})}: the GEMM calls the digits fit makes (full-rank copies: one
    torch.bmm over the chunk's copies per Linear, y = x_k @ (W + delta_k).T; autograd's backward
    dW = x_k.T @ dy_k and dx = dy_k @ (W + delta_k); recording in blocks of row_budget // K_c
    examples; the base pass through θ0's nn.Linear in blocks of row_budget rows)."""
    out = {p: collections.Counter() for p in PHASES}
    pairs = list(zip(dims[:-1], dims[1:]))
    for kc in chunks:
        for m in step_rows:
            for i, (a, b) in enumerate(pairs):
                out["training"][Gemm(kc, m, a, b, tb=True)] += 1  # forward
                out["training"][Gemm(kc, a, m, b, ta=True)] += 1  # weight-grad
                if i:
                    out["training"][Gemm(kc, m, b, a)] += 1  # input-grad
        for n in rec_sizes:
            for nb in _blocks(n, max(1, row_budget // kc)):
                for a, b in pairs:
                    out["recording"][Gemm(kc, nb, a, b, tb=True)] += 1
    for nb in _blocks(n_train, row_budget):
        for a, b in pairs:
            out["base pass"][Gemm(1, nb, a, b, tb=True)] += 1
    return out


def llama_fit_gemms(mc, chunks, step_seqs, rec_sizes, n_train, T, rank, row_budget, dtype="float32") -> dict:
    """{phase: Counter({Gemm: calls})}: the GEMMs a DAUNCE fit of a Llama (config ``mc``) with rank-r LoRA
    copies on the MLP projections (gate/up/down; the LM default targets) needs.

    Per forward over S sequences of T tokens (rows = S*T) and decoder layer: the frozen projections
    (q, k, v, o, gate, up, down: 2 * rows * in * out each), attention scores and values
    (2 * S*H * T*T*d_h each, full T x T), and per adapted projection the LoRA pair (2 * rows * r * (in + out),
    in the adapters' dtype, float32). Training backward, per step: LoRA g = dy B, dB, dA (6 * rows * r *
    out-or-in); input-grads of everything that lies after the first adapter (layer 0's attention and
    gate/up input get none; down_proj's does); no frozen weight-grads. The fused head, per step:
    logits h W^T and dh = dz W on S*(T-1) rows, plus θ0's logits h0 W^T and the direction u = W^T g at
    them (4 * rows * d * V; the tiled head recomputes the logits in both backward passes, 2 more,
    executed but not counted). Recording: the forward of every example under every copy and the
    head's logits. Base pass: θ0's backbone (no head) over the training set."""
    d, L, I_, V = mc.hidden_size, mc.num_hidden_layers, mc.intermediate_size, mc.vocab_size
    H = mc.num_attention_heads
    dh = d // H
    kv = getattr(mc, "num_key_value_heads", None) or H
    out = {p: collections.Counter() for p in PHASES}

    def backbone(c, S, K, train, lora):
        rows, m = S * T, S * T // K
        for layer in range(L):
            dx = train and layer > 0  # input-grads exist after the first adapter only
            for i, o in ((d, H * dh), (d, kv * dh), (d, kv * dh)):  # q, k, v
                c[Gemm(1, rows, i, o, tb=True, dtype=dtype)] += 1
                if dx:
                    c[Gemm(1, rows, o, i, dtype=dtype)] += 1
            c[Gemm(S * H, T, dh, T, tb=True, dtype=dtype)] += 1  # scores
            c[Gemm(S * H, T, T, dh, dtype=dtype)] += 1  # values
            if dx:
                c[Gemm(S * H, T, T, dh, dtype=dtype)] += 2  # dQ = dS K, dV = P^T dO
                c[Gemm(S * H, T, T, dh, ta=True, dtype=dtype)] += 1  # dK = dS^T Q
                c[Gemm(S * H, T, dh, T, tb=True, dtype=dtype)] += 1  # dP = dO V^T
            c[Gemm(1, rows, H * dh, d, tb=True, dtype=dtype)] += 1  # o
            if dx:
                c[Gemm(1, rows, d, H * dh, dtype=dtype)] += 1
            for name, i, o in (("gate", d, I_), ("up", d, I_), ("down", I_, d)):
                c[Gemm(1, rows, i, o, tb=True, dtype=dtype)] += 1
                if lora:
                    c[Gemm(K, m, i, rank, tb=True)] += 1  # x A^T
                    c[Gemm(K, m, rank, o, tb=True)] += 1  # h B^T
                if not train:
                    continue
                need_dx = layer > 0 or name == "down"
                c[Gemm(K, m, o, rank)] += 1  # g = dy B
                c[Gemm(K, o, m, rank, ta=True)] += 1  # dB = dy^T h
                c[Gemm(K, rank, m, i, ta=True)] += 1  # dA = g^T x
                if need_dx:
                    c[Gemm(1, rows, o, i, dtype=dtype)] += 1  # dy W
                    c[Gemm(K, m, rank, i)] += 1  # g A

    for kc in chunks:
        for b in step_seqs:
            S = kc * b
            backbone(out["training"], S, kc, True, True)
            _head(out["training"], S * (T - 1), d, V, 2, 2)  # logits of h and h0; dh = dz W, u = g W
        for n in rec_sizes:
            for nb in _blocks(n, max(1, row_budget // (kc * T))):
                backbone(out["recording"], kc * nb, kc, False, True)
                _head(out["recording"], kc * nb * (T - 1), d, V, 1, 0)
    for nb in _blocks(n_train, max(1, row_budget // T)):
        backbone(out["base pass"], nb, 1, False, False)
    return out


def _head(c, n, d, V, fwd, bwd):
    """The fused head's GEMMs over n rows, tile by tile as daunce_fast.losses' torch path runs them (in
    float32 whatever the model's dtype): ``fwd`` x logits h W^T and ``bwd`` x (logit gradients) W."""
    from daunce_fast.losses.torch_launch import tile_shape

    rc, vc = tile_shape(n, V)
    for r0 in range(0, n, rc):
        for v0 in range(0, V, vc):
            r, v = min(rc, n - r0), min(vc, V - v0)
            if fwd:
                c[Gemm(1, r, d, v, tb=True)] += fwd
            if bwd:
                c[Gemm(1, r, v, d)] += bwd


def cnn_shapes(model, target: str, example_shape) -> tuple[list[Conv], tuple[int, int]]:
    """(the Conv2d calls of one example's forward that run before the Linear ``target``, (in, out) of
    ``target``): forward hooks on θ0 in eval mode. The convolutions are the prefix's only GEMM-like
    work (BatchNorm, ReLU, pooling, flatten are elementwise or reductions, not counted)."""
    convs, head, hooks = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):

            def hook(mod, inp, out):
                if not head:
                    (b, c, h, w), (_, o, oh, ow) = inp[0].shape, out.shape
                    kh, kw = mod.kernel_size
                    convs.append(Conv(b, c, h, w, o, kh, kw, oh, ow, mod.stride, mod.padding, mod.groups))

            hooks.append(m.register_forward_hook(hook))
        elif name == target:
            hooks.append(m.register_forward_hook(lambda mod, i, o: head.append((mod.in_features, mod.out_features))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *example_shape, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return convs, head[0]


def cnn_fit_flops(convs, head, K, rows_per_model, n_train, n_test, *, share=True, chunks=1) -> dict:
    """FLOPs a DAUNCE fit with full-rank copies of the head only (the Linear after a frozen
    convolutional prefix) needs, per phase. P = sum over the prefix's convolutions of
    2 * out_elems * in_ch/groups * kh * kw per example (forward only: the prefix is frozen and its
    input is data), H = 2 * in * out of the head per row, R = rows one copy trains on, N = N_train + N_test.

    With the shared prefix (``share``):
        training  = N_train * P  +  K * R * 2H    (the cache filled once; head forward + weight-grad,
                                                    no input-grad: the head's input is frozen)
        recording = chunks * N * P  +  K * N * H   (the prefix once per example and chunk of copies)
        base pass = N_train * (P + H)              (θ0 over the training set)
    Without (every row of the K copies runs the whole model):
        training  = K * R * (P + 2H),  recording = K * N * (P + H),  base pass as above.
    """
    P = sum(c.flops for c in convs)  # convs at batch 1
    H = 2 * head[0] * head[1]
    N = n_train + n_test
    if share:
        training, recording = n_train * P + K * rows_per_model * 2 * H, chunks * N * P + K * N * H
    else:
        training, recording = K * rows_per_model * (P + 2 * H), K * N * (P + H)
    return {"training": training, "recording": recording, "base pass": n_train * (P + H)}


def cnn_fit_ops(convs, head, chunks, step_rows, rec_sizes, n_train, row_budget, *, share=True) -> dict:
    """{phase: Counter({Gemm or Conv: calls})}: the calls behind cnn_fit_flops, at the pipeline's shapes.
    The head of K_c copies: one baddbmm per step, [K_c, b, in] x (W + delta_k)^T [K_c, in, out]
    (daunce_fast.lora.layer's full-rank path), its weight-grad x^T dy [K_c, in, b] x [K_c, b, out].
    Shared: the training cache filled in blocks of shared_prefix._BLOCK_BYTES of boundary values
    (once per fit, reused by every chunk); recording in blocks of row_budget // K_c examples, the
    prefix on the block's examples, the head on K_c x block rows. Unshared: the prefix on every row."""
    from daunce_fast.lora import shared_prefix as sp

    hin, hout = head
    out = {p: collections.Counter() for p in PHASES}
    if share:
        for nb in _blocks(n_train, max(1, sp._BLOCK_BYTES // (4 * hin))):
            for c in convs:
                out["training"][c.at(nb)] += 1
    for kc in chunks:
        for m in step_rows:
            out["training"][Gemm(kc, m, hin, hout, tb=True)] += 1  # forward
            out["training"][Gemm(kc, hin, m, hout, ta=True)] += 1  # weight-grad
            if not share:
                for c in convs:
                    out["training"][c.at(kc * m)] += 1
        for n in rec_sizes:
            for nb in _blocks(n, max(1, row_budget // kc)):
                for c in convs:
                    out["recording"][c.at(nb if share else kc * nb)] += 1
                out["recording"][Gemm(kc, nb, hin, hout, tb=True)] += 1
    for nb in _blocks(n_train, row_budget):
        for c in convs:
            out["base pass"][c.at(nb)] += 1
        out["base pass"][Gemm(1, nb, hin, hout, tb=True)] += 1
    return out


def cnn_safety_flops(convs, head, chunks, step_rows, rec_sizes, row_budget, same_modes=True) -> dict:
    """FLOPs the shared prefix executes beyond what the fit needs (daunce_fast.lora.shared_prefix):
    building a split probes the prefix on 2 and 3 examples (one split per copy model and set of
    modes: with batchnorm "eval" and no dropout, training and recording run in the same modes and
    share one split, built in training; a copy model is reused by chunks of the same size); per chunk the
    training cache's safety net runs the unsplit model (no grad) and the split head on
    K_c x min(b, 4) rows (both timed: that decides whether the cache is used); the first recording block per split is
    checked the same way (unsplit on K_c x min(B, 4) rows, split: prefix on min(B, 4), head on K_c x that)."""
    from daunce_fast.lora.shared_prefix import CHECK_EXAMPLES

    P = sum(c.flops for c in convs)
    H = 2 * head[0] * head[1]
    out = {p: 0 for p in PHASES}
    seen = set()
    for kc in chunks:
        b0 = step_rows[0]
        m = min(b0, CHECK_EXAMPLES)
        out["training"] += kc * m * (P + H) + kc * m * H
        if kc not in seen:
            seen.add(kc)
            out["training"] += 5 * P
            mr = min(rec_sizes[0], max(1, row_budget // kc), CHECK_EXAMPLES)
            out["recording"] += (0 if same_modes else 5 * P) + kc * mr * (P + H) + mr * P + kc * mr * H
    return out


def total_flops(gemms: dict) -> dict:
    return {p: sum(g.flops * n for g, n in c.items()) for p, c in gemms.items()}


# ------------------------------------------------------------------------------------------ timing
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_gemm(g: Gemm, device, target_s: float = 0.01) -> float:
    """Median seconds of one call of ``g`` alone (3 loops of enough calls to last ``target_s``)."""
    dt = getattr(torch, g.dtype)
    mk = lambda r, c, t: (  # noqa: E731
        torch.randn(g.batch, c, r, device=device, dtype=dt).transpose(1, 2)
        if t
        else torch.randn(g.batch, r, c, device=device, dtype=dt)
    )
    a, b = mk(g.m, g.k, g.ta), mk(g.k, g.n, g.tb)
    if g.batch == 1:
        a, b = a[0], b[0]
        f = lambda: torch.mm(a, b)  # noqa: E731
    else:
        f = lambda: torch.bmm(a, b)  # noqa: E731
    return _time_calls(f, device, target_s)


def _time_calls(f, device, target_s: float) -> float:
    """Median over 3 rounds of the seconds per call of ``f`` (each round ~``target_s``), after a warm-up call."""
    f()
    _sync(device)
    t0 = time.perf_counter()
    f()
    _sync(device)
    n = max(1, int(target_s / max(time.perf_counter() - t0, 1e-7)))
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        _sync(device)
        ts.append((time.perf_counter() - t0) / n)
    return statistics.median(ts)


def time_conv(c: Conv, device, target_s: float = 0.01) -> float:
    """Median seconds of one torch.nn.functional.conv2d of shape ``c`` alone (forward, no grad)."""
    dt = getattr(torch, c.dtype)
    x = torch.randn(c.batch, c.in_ch, c.h, c.w, device=device, dtype=dt)
    w = torch.randn(c.out_ch, c.in_ch // c.groups, c.kh, c.kw, device=device, dtype=dt)
    f = lambda: torch.nn.functional.conv2d(x, w, None, c.stride, c.padding, 1, c.groups)  # noqa: E731
    with torch.no_grad():
        return _time_calls(f, device, target_s)


def gemm_limits(gemms: dict, device) -> dict:
    """{phase: seconds}: sum over the phase's GEMM (and convolution) calls of their shape's measured time."""
    cache = {}
    out = {}
    for p, c in gemms.items():
        s = 0.0
        for g, n in c.items():
            if g not in cache:
                cache[g] = time_conv(g, device) if isinstance(g, Conv) else time_gemm(g, device)
            s += n * cache[g]
        out[p] = s
    return out


class Phases:
    """Wraps the fit's phases from outside the library: pipeline.train_chunk, pipeline.record_chunk
    and the head's base_tables; accumulates seconds (and, with ``count_flops``, the FLOPs
    FlopCounterMode sees) per phase."""

    def __init__(self, device, count_flops=False, profile_first_chunk=False):
        self.device, self.count_flops, self.profile = device, count_flops, profile_first_chunk
        self.seconds = collections.defaultdict(float)
        self.flops = collections.defaultdict(int)
        self.table = None

    def wrap(self, name, fn):
        def wrapped(*a, **kw):
            prof = None
            if self.profile and name == "training" and self.table is None:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                prof = profile(activities=acts)
            ctx = contextlib.nullcontext()
            if self.count_flops:
                from torch.utils.flop_counter import FlopCounterMode

                ctx = FlopCounterMode(display=False)
            _sync(self.device)
            t0 = time.perf_counter()
            with prof or contextlib.nullcontext(), ctx:
                res = fn(*a, **kw)
                _sync(self.device)
            self.seconds[name] += time.perf_counter() - t0
            if self.count_flops:
                self.flops[name] += ctx.get_total_flops()
            if prof is not None:
                sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                self.table = prof.key_averages().table(sort_by=sort, row_limit=15)
            return res

        return wrapped

    @contextlib.contextmanager
    def patched(self):
        tc, rc = pipeline.train_chunk, pipeline.record_chunk
        pipeline.train_chunk = self.wrap("training", tc)
        pipeline.record_chunk = self.wrap("recording", _no_record if self.profile else rc)
        try:
            yield self
        finally:
            pipeline.train_chunk, pipeline.record_chunk = tc, rc


def _no_record(model, examples, num_models, head, *, row_budget):
    """record_chunk's stand-in in the profiling fit (only its training chunk is looked at): zeros."""
    import numpy as np

    return np.zeros((num_models, len(examples)), dtype=np.float32)


def run_fit(theta0, train, record_sets, opts, device, *, count_flops=False, profile=False) -> Phases:
    """One Daunce.fit in a fresh workdir, timed phase by phase (``seconds["total"]``: the whole fit)."""
    ph = Phases(device, count_flops=count_flops, profile_first_chunk=profile)
    wd = tempfile.mkdtemp(prefix="roofline_")
    try:
        with ph.patched():
            d = Daunce(theta0, workdir=wd, **opts)
            d.head.base_tables = ph.wrap("base pass", d.head.base_tables)
            ctx = contextlib.nullcontext()
            if count_flops:
                from torch.utils.flop_counter import FlopCounterMode

                ctx = FlopCounterMode(display=False)
            _sync(device)
            t0 = time.perf_counter()
            with ctx:
                d.fit(train, record=record_sets)
            _sync(device)
            ph.seconds["total"] = time.perf_counter() - t0
            if count_flops:
                ph.flops["total"] = ctx.get_total_flops()
            d.close()
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return ph


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    name: str
    theta0: object
    train: object
    record_sets: dict
    opts: dict
    gemms: dict
    device: str
    note: str = ""


def fit_layout(theta0, train, opts):
    """(chunk sizes, per-step batch sizes of one model) of the fit ``opts`` would run."""
    with Daunce(theta0, **opts) as d:
        chunks = [len(ids) for _, ids in d.chunks()]
        cfg = d.config
    plan = ChunkPlan(cfg, [0], len(train))
    bs = cfg.batch_size  # ChunkPlan.batch's slices: position pos of an epoch takes [pos*bs, (pos+1)*bs) of n_k
    return chunks, [min(bs, plan.n_k - (s % plan.spe) * bs) for s in range(plan.total_steps)], cfg


def digits_case(K, device="cpu") -> Case:
    from daunce_fast.demos.tasks import load_tabular, mlp, train_classifier

    task = load_tabular("digits", seed=0)
    theta0 = train_classifier(mlp(64, 10, seed=0), task.x_train, task.y_train, epochs=30, lr=3e-3, seed=0)
    theta0 = theta0.to(device)
    train = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    test = torch.utils.data.TensorDataset(task.x_test, task.y_test)
    # the defaults of the issue spelled out (the library's defaults may move: lr and epochs "auto")
    opts = dict(num_models=K, seed=0, rank="full", optimizer="adam", lr=1e-3, epochs=10, batch_size=128, ratio=0.5)
    chunks, step_rows, cfg = fit_layout(theta0, train, opts)
    dims = [64, 64, 64, 10]
    n, m = len(task.y_train), len(task.y_test)
    gemms = mlp_fit_gemms(dims, chunks, step_rows, [n, m], n, cfg.row_budget)
    want = mlp_fit_flops(dims, K, sum(step_rows), n, m)
    assert total_flops(gemms) == want, (total_flops(gemms), want)  # the call list agrees with the formula
    return Case(
        f"digits MLP 64-64-10 K={K}",
        theta0,
        train,
        {"test": test},
        opts,
        gemms,
        device,
        f"N={n}/{m}, chunks {chunks}, {len(step_rows)} steps, rows/model {sum(step_rows)}",
    )


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def lm_case(K=64, device="cpu") -> Case:
    from daunce_fast.demos import lm_backdoor as L

    model = L.build_model(seed=0).to(device)
    train = L.make_corpus(400, 0.03, seed=0)
    trig = L.make_corpus(16, all_poisoned=True, seed=1)
    clean = L.make_corpus(16, seed=2)
    opts = {**L.lm_defaults(), "num_models": K, "seed": 0}
    return _llama_case(f"lm_backdoor Llama K={K}", model, train, {"triggered": trig, "clean": clean}, opts, device)


def big_llama_case(K=100, device="cuda", hidden=1024, layers=24, inter=2816, vocab=32000, heads=16, T=64) -> Case:
    """The GPU case: a Llama from a config (random weights, bf16), 256 training and 64 recorded synthetic
    sequences of T tokens (loss on the second half), LM defaults."""
    import transformers

    from daunce_fast.demos.lm_backdoor import lm_defaults

    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=T,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(16, vocab, (320, T), generator=g)
    labels = ids.clone()
    labels[:, : T // 2] = -100  # loss on the second half only
    train, test = _Dicts(ids[:256], labels[:256]), _Dicts(ids[256:], labels[256:])
    opts = {**lm_defaults(), "num_models": K, "seed": 0}
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return _llama_case(f"Llama {params:.2f}B bf16 K={K}", model, train, {"test": test}, opts, device, "bfloat16")


def _llama_case(name, model, train, record_sets, opts, device, dtype="float32") -> Case:
    from daunce_fast.daunce.data import as_examples

    chunks, step_seqs, cfg = fit_layout(model, train, opts)
    T = as_examples(train).labels.shape[1]
    rank = cfg.rank or 16
    rec = [len(train)] + [len(v) for v in record_sets.values()]
    gemms = llama_fit_gemms(model.config, chunks, step_seqs, rec, len(train), T, rank, cfg.row_budget, dtype)
    note = f"N={len(train)}, T={T}, chunks {chunks}, {len(step_seqs)} steps x {step_seqs[0]} seqs, LoRA r={rank}"
    return Case(name, model, train, record_sets, opts, gemms, device, note)


def cnn_case(K=512, device="cpu") -> Case:
    """The digits CNN (daunce_fast.evaluation.groundtruth_cnn: Conv 16 + BN + ReLU, Conv 32 + BN + ReLU,
    MaxPool, Linear 512->10 named "8"), θ0 trained with CNNRecipe's recipe (20 epochs Adam 2e-3, batch
    64, weight decay 1e-4), all 1437 / 360 images, head-only full-rank copies; ``case.gemms``: the
    calls the fit needs with the shared prefix (cnn_fit_ops)."""
    from daunce_fast.evaluation import groundtruth_cnn as gc

    r = gc.CNNRecipe()
    task = gc.load_image_task(r)
    t0 = time.perf_counter()
    theta0 = gc.train_plain(
        gc.cnn(10, r.channels, seed=r.seed),
        task.x_train,
        task.y_train,
        epochs=r.epochs,
        lr=r.lr,
        batch_size=r.batch_size,
        weight_decay=r.weight_decay,
        seed=r.seed,
    )
    theta0 = theta0.eval().to(device)
    with torch.no_grad():
        acc = (theta0(task.x_test.to(device)).argmax(1).cpu() == task.y_test).float().mean().item()
    print(f"CNN θ0: {r.epochs} epochs in {time.perf_counter() - t0:.1f} s, test accuracy {acc:.3f}")
    train = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    test = torch.utils.data.TensorDataset(task.x_test, task.y_test)
    opts = dict(num_models=K, seed=0, lr=1e-3, epochs=10, batch_size=128, target_modules=["8"])
    chunks, step_rows, cfg = fit_layout(theta0, train, opts)
    convs, head = cnn_shapes(theta0, "8", (1, 8, 8))
    n, m = len(train), len(test)
    gemms = cnn_fit_ops(convs, head, chunks, step_rows, [n, m], n, cfg.row_budget, share=True)
    want = cnn_fit_flops(convs, head, K, sum(step_rows), n, m, share=True, chunks=len(chunks))
    assert total_flops(gemms) == want, (total_flops(gemms), want)
    case = Case(
        f"digits CNN head-only K={K}",
        theta0,
        train,
        {"test": test},
        opts,
        gemms,
        device,
        f"N={n}/{m}, chunks {chunks}, {len(step_rows)} steps, rows/model {sum(step_rows)}, rank {cfg.rank or 'full'}, "
        f"perturbation {cfg.perturbation}, batchnorm {cfg.batchnorm}",
    )
    case.unshared = cnn_fit_flops(convs, head, K, sum(step_rows), n, m, share=False, chunks=len(chunks))
    same = cfg.batchnorm == "eval" and not cfg.dropout
    case.safety = cnn_safety_flops(convs, head, chunks, step_rows, [n, m], cfg.row_budget, same)
    case.convs, case.head_shape = convs, head
    return case


# ------------------------------------------------------------------------------------------ checks
def check_flop_formula():
    """mlp_fit_flops against FlopCounterMode on a tiny real fit (total and per phase); raises on a mismatch."""
    from daunce_fast.demos.tasks import mlp

    g = torch.Generator().manual_seed(0)
    n, m, dims = 40, 12, [64, 16, 16, 10]
    x, y = torch.randn(n + m, 64, generator=g), torch.randint(0, 10, (n + m,), generator=g)
    train = torch.utils.data.TensorDataset(x[:n], y[:n])
    test = torch.utils.data.TensorDataset(x[n:], y[n:])
    theta0 = mlp(64, 10, hidden=16, seed=0)
    opts = dict(num_models=4, batch_size=8, epochs=2, lr=1e-3, seed=0)
    _, step_rows, _ = fit_layout(theta0, train, opts)
    want = mlp_fit_flops(dims, 4, sum(step_rows), n, m)
    ph = run_fit(theta0, train, {"test": test}, opts, "cpu", count_flops=True)
    got = {p: ph.flops[p] for p in PHASES}
    print(f"FLOP formula check (MLP 64-16-16-10, K=4, N={n}/{m}, {len(step_rows)} steps of {step_rows} rows):")
    print(f"  formula          {want}  total {sum(want.values())}")
    print(f"  FlopCounterMode  {got}  total {ph.flops['total']}")
    assert got == want and ph.flops["total"] == sum(want.values()), "FLOP formula disagrees with FlopCounterMode"


def check_cnn_flop_formula():
    """cnn_fit_flops against FlopCounterMode on a tiny fit of the digits CNN's architecture (channels
    4/8, random 1x8x8 images, head-only copies): the conv formula on the prefix's F.conv2d calls, the
    fit without the shared prefix (exact), and with it (needed + cnn_safety_flops, exact); raises on
    a mismatch."""
    from torch.utils.flop_counter import FlopCounterMode

    from daunce_fast.evaluation.groundtruth_cnn import cnn
    from daunce_fast.lora import shared_prefix as sp

    g = torch.Generator().manual_seed(0)
    n, m, K = 40, 12, 4
    x, y = torch.randn(n + m, 1, 8, 8, generator=g), torch.randint(0, 10, (n + m,), generator=g)
    train = torch.utils.data.TensorDataset(x[:n], y[:n])
    test = torch.utils.data.TensorDataset(x[n:], y[n:])
    theta0 = cnn(10, channels=(4, 8), seed=0).eval()
    convs, head = cnn_shapes(theta0, "8", (1, 8, 8))
    conv_mods = [mod for mod in theta0 if isinstance(mod, torch.nn.Conv2d)]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        h = x[:7]
        for mod in conv_mods:
            h = torch.nn.functional.conv2d(h, mod.weight, mod.bias, mod.stride, mod.padding)
    assert fc.get_total_flops() == sum(c.at(7).flops for c in convs), (fc.get_total_flops(), convs)
    opts = dict(num_models=K, batch_size=8, epochs=2, lr=1e-3, seed=0, target_modules=["8"])
    chunks, step_rows, cfg = fit_layout(theta0, train, opts)
    print(f"CNN FLOP check (channels 4/8, head 128->10, K={K}, N={n}/{m}, steps of {step_rows} rows):")
    print(f"  conv formula == FlopCounterMode on F.conv2d of 7 images: {fc.get_total_flops()}")
    enabled = sp.ENABLED
    try:
        for share in (False, True):
            sp.ENABLED = share
            sp._SPLITS.clear()
            want = cnn_fit_flops(convs, head, K, sum(step_rows), n, m, share=share, chunks=len(chunks))
            ops = cnn_fit_ops(convs, head, chunks, step_rows, [n, m], n, cfg.row_budget, share=share)
            assert total_flops(ops) == want, (total_flops(ops), want)
            same = cfg.batchnorm == "eval" and not cfg.dropout
            extra = cnn_safety_flops(convs, head, chunks, step_rows, [n, m], cfg.row_budget, same) if share else {}
            executed = {p: want[p] + extra.get(p, 0) for p in PHASES}
            ph = run_fit(theta0, train, {"test": test}, opts, "cpu", count_flops=True)
            got = {p: ph.flops[p] for p in PHASES}
            label = "shared prefix on " if share else "shared prefix off"
            print(f"  {label}: formula needed {want}" + (f" + safety net {extra}" if share else ""))
            print(f"  {label}: FlopCounterMode      {got}  total {ph.flops['total']}")
            assert got == executed and ph.flops["total"] == sum(executed.values()), (
                f"CNN FLOP formula disagrees with FlopCounterMode (share={share})"
            )
    finally:
        sp.ENABLED = enabled
        sp._SPLITS.clear()


# ------------------------------------------------------------------------------------------ main
def measure(case: Case, threads: list[int], repeats: int, profile: bool) -> tuple[list[dict], dict]:
    """Rounds of (fit, GEMM shapes) per thread count, interleaved; returns (rows, profile tables)."""
    flops = total_flops(case.gemms)
    fits = {t: [] for t in threads}
    lims = {t: [] for t in threads}
    loads = {t: [] for t in threads}
    cpu = torch.device(case.device).type == "cpu"
    warm = {**case.opts, "num_models": 2}
    run_fit(case.theta0, case.train, case.record_sets, warm, case.device)  # warm-up: first calls, imports
    for r in range(repeats):
        for t in threads:
            if cpu:
                torch.set_num_threads(t)
            ph = run_fit(case.theta0, case.train, case.record_sets, case.opts, case.device)
            lim = gemm_limits(case.gemms, case.device)
            fits[t].append(dict(ph.seconds))
            lims[t].append(lim)
            loads[t].append(os.getloadavg()[0])
            print(
                f"  round {r + 1}/{repeats} threads {torch.get_num_threads() if cpu else t}: fit {ph.seconds['total']:.2f} s "
                f"(train {ph.seconds['training']:.2f}, record {ph.seconds['recording']:.2f}, "
                f"base {ph.seconds['base pass']:.3f}), GEMM limit {sum(lim.values()):.2f} s, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    tables = {}
    if profile:
        for t in threads:
            if cpu:
                torch.set_num_threads(t)
            opts = {**case.opts, "num_models": max(2, min(case.opts["num_models"], _chunk(case)))}
            ph = run_fit(case.theta0, case.train, {}, opts, case.device, profile=True)
            tables[t] = ph.table
    rows = []
    for t in threads:
        rows += _phase_rows(case, fits[t], lims[t], flops, threads=t if cpu else None, loads=loads[t])
    return rows, tables


def measure_cnn(case: Case, repeats: int, off_repeats: int, profile: bool) -> tuple[list[dict], dict]:
    """Rounds of (fit with the shared prefix on, fit with it off, the needed calls' shapes timed
    alone), the on/off order alternating per round; the off fit only in the first ``off_repeats``
    rounds. Both are reported against the same limit: the FLOPs the fit needs with the prefix shared.
    Also records, per on fit, the training cache's two timed first steps (unsplit, split)."""
    from daunce_fast.lora import shared_prefix as sp

    flops = total_flops(case.gemms)
    fits = {True: [], False: []}
    lims, loads, first = [], {True: [], False: []}, []
    tp_orig = sp.training_prefix
    made = []

    def tp(*a, **kw):
        out = tp_orig(*a, **kw)
        made.append(out)
        return out

    def fit(share, opts=None, record_sets=None, prof=False):
        sp.ENABLED = share
        sp._SPLITS.clear()
        made.clear()
        try:
            return run_fit(
                case.theta0,
                case.train,
                case.record_sets if record_sets is None else record_sets,
                opts or case.opts,
                case.device,
                profile=prof,
            )
        finally:
            sp.ENABLED = True

    sp.training_prefix = tp
    try:
        fit(True, {**case.opts, "num_models": 2})  # warm-up: first calls, imports
        fit(False, {**case.opts, "num_models": 2})
        for r in range(repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            for share in order:
                if not share and r >= off_repeats:
                    continue
                ph = fit(share)
                fits[share].append(dict(ph.seconds))
                loads[share].append(os.getloadavg()[0])
                if share:
                    first.append([(t.state, dict(t.times)) for t in made if t is not None])
                s = ph.seconds
                print(
                    f"  round {r + 1}/{repeats} prefix {'on ' if share else 'off'}: fit {s['total']:.2f} s "
                    f"(train {s['training']:.2f}, record {s['recording']:.2f}, base {s['base pass']:.3f})"
                    + (f", cache {first[-1]}" if share else "")
                    + f", load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
            lims.append(gemm_limits(case.gemms, case.device))
            print(f"  round {r + 1}/{repeats}: limit {sum(lims[-1].values()):.3f} s {lims[-1]}", flush=True)
        tables = {}
        if profile:
            ph = fit(True, prof=True, record_sets={})
            tables[1] = ph.table
    finally:
        sp.training_prefix = tp_orig
    rows = []
    threads = torch.get_num_threads() if torch.device(case.device).type == "cpu" else None
    for share in (True, False):
        if fits[share]:
            name = f"{case.name}, prefix {'on' if share else 'off'}"
            rows += _phase_rows(
                case, fits[share], lims, flops, threads=threads, loads=loads[share], name=name, rounds=True
            )
    if first:
        print(f"training cache's timed first steps (state, seconds per forward) per on fit: {first}")
    return rows, tables


def _overhead(f: dict) -> float:
    """Seconds of a fit outside its timed phases."""
    return f["total"] - sum(f[q] for q in PHASES)


def _phase_rows(case, fits: list, lims: list, flops: dict, *, threads, loads, name=None, rounds=False) -> list[dict]:
    """One row per phase (PHASES, "overhead", "total") of ``case``: medians over the rounds ``fits``
    ({phase: s, "total": s}) against the medians of the limits ``lims`` ({phase: s}) for ``flops``;
    ``rounds``: each row also lists every round's seconds ("rounds_s")."""
    med = statistics.median
    tot_fit, tot_lim = med([f["total"] for f in fits]), med([sum(x.values()) for x in lims])
    rows = []
    for p in (*PHASES, "overhead", "total"):
        if p == "overhead":
            s, fl, lim = med([_overhead(f) for f in fits]), 0, 0.0
        elif p == "total":
            s, fl, lim = tot_fit, sum(flops.values()), tot_lim
        else:
            s, fl, lim = med([f[p] for f in fits]), flops[p], med([x[p] for x in lims])
        row = {
            "case": name or case.name,
            "device": case.device,
            "threads": threads,
            "phase": p,
            "gflop": fl / 1e9,
            "limit_s": lim,
            "gemm_gflops": fl / lim / 1e9 if lim else None,
            "median_s": s,
            "x_limit": s / lim if lim else None,
            "share_of_fit": s / tot_fit,
            "achieved_gflops": fl / s / 1e9 if fl else None,
            "repeats": len(fits),
            "loadavg_1m": [round(x, 2) for x in loads],
            "note": case.note,
        }
        if rounds:
            row["rounds_s"] = [round(f.get(p, _overhead(f)), 3) for f in fits]
        if lim:  # bench/gpu_check.sh's summary prints "ratio" (it cannot format None)
            row["ratio"] = s / lim
        rows.append(row)
    return rows


def _chunk(case: Case) -> int:
    with Daunce(case.theta0, **case.opts) as d:
        return d.chunk_size()


def print_markdown(rows):
    cols = [
        ("case", "case"),
        ("threads", "threads"),
        ("phase", "phase"),
        ("gflop", "GEMM GFLOP"),
        ("gemm_gflops", "GEMM GFLOP/s alone"),
        ("limit_s", "limit s"),
        ("median_s", "fit s"),
        ("x_limit", "x limit"),
        ("share_of_fit", "share of fit"),
        ("achieved_gflops", "achieved GFLOP/s"),
        ("loadavg_1m", "load (1 min)"),
    ]

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        if isinstance(v, list):
            return "/".join(f"{x:.1f}" for x in v)
        return str(v)

    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--K", type=int, default=2048, help="digits: number of copies")
    ap.add_argument("--quick", action="store_true", help="digits at K=64 (and 2 repeats unless --repeats)")
    ap.add_argument("--lm", action="store_true", help="also the LM fit of bench/quality/lm_backdoor.py at K=64")
    ap.add_argument("--lm-only", action="store_true", help="the LM fit only")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts, e.g. 1,2")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per thread count (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    ap.add_argument("--no-check", action="store_true", help="skip the FlopCounterMode check of the formula")
    ap.add_argument("--gpu", action="store_true", help="the GPU section only (needs CUDA)")
    ap.add_argument("--cnn", action="store_true", help="the digits CNN with head-only copies instead (shared prefix)")
    ap.add_argument("--cnn-K", type=int, default=512, help="--cnn: number of copies")
    ap.add_argument(
        "--off-repeats", type=int, default=None, help="--cnn: rounds with the prefix off (default: --repeats)"
    )
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    threads = [int(t) for t in args.threads.split(",")]

    if args.gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available here; nothing run")
        return 0
    m = machine()
    print(
        f"machine: {m.get('cpu', m['machine'])}, {m['cpus']} CPUs{', ' + m['gpu'] if 'gpu' in m else ''}; "
        f"Python {m['python']}, torch {m.get('torch')}, numpy {m.get('numpy')}; git {m.get('git_sha')}; "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    if not args.no_check:
        check_cnn_flop_formula() if args.cnn else check_flop_formula()
    if args.cnn:
        torch.set_num_threads(threads[0])
        off = repeats if args.off_repeats is None else args.off_repeats
        return run_cnn(cnn_case(args.cnn_K), repeats, off, not args.no_profile)

    cases = []
    if args.gpu:
        threads = [torch.get_num_threads()]
        cases.append(lambda: digits_case(2048, "cuda"))
        cases.append(lambda: big_llama_case(100, "cuda"))
    else:
        if not args.lm_only:
            cases.append(lambda: digits_case(64 if args.quick else args.K))
        if args.lm or args.lm_only:
            try:
                import transformers  # noqa: F401

                cases.append(lambda: lm_case(64))
            except ImportError:
                print("--lm: transformers is not installed; the LM case is skipped")
    all_rows = []
    for make in cases:
        case = make()
        print(f"\n## {case.name} ({case.device}; {case.note})", flush=True)
        try:
            rows, tables = measure(case, threads, repeats, not args.no_profile)
        except torch.cuda.OutOfMemoryError as exc:  # the 0.5B Llama at K=100 in one chunk
            print(f"  out of memory: {exc}; retrying with adapter_chunk=25")
            torch.cuda.empty_cache()
            case.opts["adapter_chunk"] = 25
            case = _llama_case(
                case.name + " (chunk 25)", case.theta0, case.train, case.record_sets, case.opts, case.device, "bfloat16"
            )
            rows, tables = measure(case, threads, repeats, not args.no_profile)
        record("fit_roofline", rows)
        all_rows += rows
        for t, table in tables.items():
            print(f"\ntorch.profiler, one training chunk of {case.name}, threads {t}:\n{table}")
        print()
        print_markdown(rows)
    if len(cases) > 1:
        print("\nall cases:")
        print_markdown(all_rows)
    if args.gpu:  # the CNN with head-only copies, prefix on and off (the off fit repeats the prefix K times)
        run_cnn(cnn_case(512, "cuda"), repeats, repeats, not args.no_profile)
    return 0


def run_cnn(case: Case, repeats: int, off_repeats: int, profile: bool) -> int:
    print(f"\n## {case.name} ({case.device}; {case.note})", flush=True)
    print(f"  prefix convolutions (per example): {case.convs}; head {case.head_shape}")
    g = lambda d: {p: round(v / 1e9, 3) for p, v in d.items()}  # noqa: E731
    need = total_flops(case.gemms)
    print(f"  needed GFLOP with the shared prefix: {g(need)}, total {sum(need.values()) / 1e9:.3f}")
    print(
        f"  needed GFLOP without it (prefix on every row): {g(case.unshared)}, total {sum(case.unshared.values()) / 1e9:.3f}"
    )
    print(f"  executed beyond the need by the shared prefix's safety net: {g(case.safety)}")
    rows, tables = measure_cnn(case, repeats, off_repeats, profile)
    record("fit_roofline", rows)
    for table in tables.values():
        print(f"\ntorch.profiler, one training chunk of {case.name}, prefix on:\n{table}")
    print()
    print_markdown(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
