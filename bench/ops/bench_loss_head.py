"""Benchmark: fused/chunked per-example loss head vs explicit logits + F.cross_entropy(reduction="none").

    PYTHONPATH=$PWD python bench/ops/bench_loss_head.py [--rows 512] [--d 256] [--vocab 32000 128000]
                                                    [--repeats 3] [--threads 1]

CPU section: the chunked torch path vs the explicit path, forward+backward (gradient w.r.t.
hidden; the head frozen, as in DAUNCE with LoRA) and forward only; time (interleaved medians)
and peak extra resident memory, each measured in a fresh process (clear_refs + VmHWM - VmRSS;
in one process, memory freed by the first path is reused by the second and hides its peak).
``--threads`` sets torch's CPU threads (default 1: on a shared, oversubscribed machine every
parallel region waits for a descheduled thread and 2-thread timings are noise).
GPU section (only with CUDA): the Triton kernels and the chunked torch path vs the explicit
path, time and peak allocated CUDA memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness
from harness import _status_kib, compare, print_table, record

from daunce_fast.losses import per_example_loss


def explicit(h, W, y):
    z = h @ W.T
    return F.cross_entropy(z.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape).mean(1)


def fwd_bwd(fn, h, W, y):
    hh = h.detach().requires_grad_(True)
    fn(hh, W, y).sum().backward()
    return hh.grad


def _cpu_inputs(R, T, d, V):
    torch.manual_seed(0)
    return torch.randn(R, T, d), torch.randn(V, d) / d**0.5, torch.randint(0, V, (R, T))


def _ours(h_, W_, y_):
    return per_example_loss(h_, W_, y_, backend="torch")


IMPLS = {"explicit": explicit, "chunked": _ours}
PHASES = {"fwd+bwd": fwd_bwd, "fwd": lambda f, *a: f(*a)}


def probe(args):
    """Child process: peak extra RSS of one call (after a tiny warm-up of the same path)."""
    impl, phase, V, R, T = args.probe
    V, R, T = int(V), int(R), int(T)
    fn, wrap = IMPLS[impl], PHASES[phase]
    wrap(fn, *_cpu_inputs(2, 3, args.d, 64))
    h, W, y = _cpu_inputs(R, T, args.d, V)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_kib("VmRSS")
    wrap(fn, h, W, y)
    print("PEAK_BYTES", (_status_kib("VmHWM") - start) * 1024)


def _peak_in_child(impl, phase, V, R, T, args):
    cmd = [
        sys.executable,
        __file__,
        "--d",
        str(args.d),
        "--threads",
        str(args.threads),
        "--probe",
        impl,
        phase,
        str(V),
        str(R),
        str(T),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int([ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_BYTES")][-1].split()[1])


def cpu_section(args):
    rows = []
    T = 64
    R = max(1, args.rows // T)
    for V in args.vocab:
        h, W, y = _cpu_inputs(R, T, args.d, V)
        for phase, wrap in PHASES.items():
            res = compare(
                {k: (lambda f=f, wrap=wrap, h=h, W=W, y=y: wrap(f, h, W, y)) for k, f in IMPLS.items()},
                baseline="explicit",
                repeats=args.repeats,
            )
            mem = {k: _peak_in_child(k, phase, V, R, T, args) for k in IMPLS}
            for k in IMPLS:
                rows.append(
                    {
                        "device": "cpu",
                        "V": V,
                        "rows": R * T,
                        "d": args.d,
                        "phase": phase,
                        "impl": k,
                        "threads": args.threads,
                        "ms": res[k]["median_s"] * 1e3,
                        "time_ratio": res[k]["ratio"],
                        "peak_MiB": mem[k] / 2**20,
                        "mem_ratio": mem[k] / max(mem["explicit"], 1),
                    }
                )
    return rows


def gpu_section(args):
    rows = []
    dev = "cuda"
    T = 512
    R = max(1, args.gpu_rows // T)
    for dtype in (torch.bfloat16, torch.float32):
        for V in args.vocab:
            torch.manual_seed(0)
            h = torch.randn(R, T, args.gpu_d, device=dev, dtype=dtype)
            W = (torch.randn(V, args.gpu_d, device=dev) / args.gpu_d**0.5).to(dtype)
            y = torch.randint(0, V, (R, T), device=dev)
            impls = {
                "explicit": explicit,
                "triton": lambda h_, W_, y_: per_example_loss(h_, W_, y_, backend="triton"),
                "chunked": lambda h_, W_, y_: per_example_loss(h_, W_, y_, backend="torch"),
            }
            for phase, wrap in (("fwd+bwd", fwd_bwd), ("fwd", lambda f, *a: f(*a))):
                res = compare(
                    {k: (lambda f=f, wrap=wrap, h=h, W=W, y=y: wrap(f, h, W, y)) for k, f in impls.items()},
                    baseline="explicit",
                    repeats=args.repeats,
                )
                mem = {}
                for k, f in impls.items():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    wrap(f, h, W, y)
                    torch.cuda.synchronize()
                    mem[k] = torch.cuda.max_memory_allocated() - base
                for k in impls:
                    rows.append(
                        {
                            "device": "cuda",
                            "dtype": str(dtype).replace("torch.", ""),
                            "V": V,
                            "rows": R * T,
                            "d": args.gpu_d,
                            "phase": phase,
                            "impl": k,
                            "ms": res[k]["median_s"] * 1e3,
                            "time_ratio": res[k]["ratio"],
                            "peak_MiB": mem[k] / 2**20,
                            "mem_ratio": mem[k] / max(mem["explicit"], 1),
                        }
                    )
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512, help="R*T rows on CPU")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-rows", type=int, default=8192)
    p.add_argument("--gpu-d", type=int, default=2048)
    p.add_argument("--no-cpu", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        return probe(args)
    cols = [
        "device",
        "dtype",
        "threads",
        "V",
        "rows",
        "d",
        "phase",
        "impl",
        "ms",
        "time_ratio",
        "peak_MiB",
        "mem_ratio",
    ]
    rows = []
    if not args.no_cpu:
        rows += cpu_section(args)
    if torch.cuda.is_available():
        rows += gpu_section(args)
    else:
        print("(no CUDA device: GPU section skipped)")
    print_table(rows, cols)
    print("results appended to", record("loss_head", rows))


if __name__ == "__main__":
    main()
