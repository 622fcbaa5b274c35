"""Benchmark of daunce_fast.correlate / topk (issue 4). Ratios measured side by side in one run.

CPU (default): K=128, N=200,000, M=1,000, k=100, float32 inputs
  ours        topk(train, test, k) with the cpu backend, standardisation included
  matmul      bare torch.matmul of already-standardised [N,K] x [K,M] into a preallocated out= (the limit)
  torch way   standardise (float64 torch) + full [N,M] matmul + torch.topk        (what users run today)
  numpy way   standardise (float64 numpy) + full [N,M] matmul + argpartition + sort of the k
  peak extra resident memory of topk
Full matrix to disk: N=200,000, M=2,000: correlate(out=PATH) vs numpy.save of the same bytes
(with and without fsync; our writer makes its tiles durable with msync + fsync).

GPU (--gpu, only when CUDA is present): N=1e6, M=1e4, K=100, k=100: achieved TFLOP/s of topk with
the triton and cuda backends vs the measured TF32 torch.matmul of the same shape (chunked over N
into a reused buffer: the full fp32 output would be 40 GB).

  python bench/ops/bench_correlation.py [--quick] [--skip-numpy] [--skip-disk] [--gpu] [--gpu-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1]  # bench/ (the shared harness) and the repo root
sys.path[:0] = [str(BENCH), str(BENCH.parent)]
from harness import compare, machine, print_table, record  # noqa: E402

import daunce_fast  # noqa: E402


def losses(K, n, seed, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    base = torch.rand(n, generator=g, device=device) * 3 + 0.5  # per-example mean loss
    return (base + 0.1 * torch.randn(K, n, generator=g, device=device)).float()


def standardise_torch(x):
    x64 = x.double()
    xc = x64 - x64.mean(0)
    return (xc / xc.norm(dim=0)).float()


def standardise_numpy(x):
    x64 = x.astype(np.float64)
    xc = x64 - x64.mean(0)
    return (xc / np.sqrt((xc * xc).sum(0))).astype(np.float32)


def with_cpu_time(fns):
    """Wrap each function to record the process CPU time (all threads) of every call: on a shared,
    oversubscribed machine wall times carry the waits for a core, CPU time the work itself."""
    cpu = {name: [] for name in fns}

    def wrap(name, fn):
        def g():
            c0 = time.process_time()
            r = fn()
            cpu[name].append(time.process_time() - c0)
            return r

        return g

    return {name: wrap(name, fn) for name, fn in fns.items()}, cpu


def peak_in_subprocess(K, N, M, k):
    """Peak extra RSS of one topk call in a fresh process (no allocator reuse from earlier runs)."""
    import subprocess

    code = f"""
import sys; sys.path[:0] = {[str(Path(__file__).resolve().parent), str(BENCH), str(BENCH.parent)]!r}
import numpy as np, torch, daunce_fast
from harness import peak_rss_delta
from bench_correlation import losses
A, B = losses({K}, {N}, 0).numpy(), losses({K}, {M}, 1).numpy()
daunce_fast.topk(A[:, :1000], B, {k}, backend="cpu")  # import / load everything once
_, peak = peak_rss_delta(lambda: daunce_fast.topk(A, B, {k}, backend="cpu"))
print(peak)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def cpu_section(args, rows):
    K, N, M, k = 128, 200_000, 1_000, 100
    if args.quick:
        N = 50_000
    A, B = losses(K, N, 0), losses(K, M, 1)
    An, Bn = A.numpy(), B.numpy()
    Za, Zb = standardise_torch(A).T.contiguous(), standardise_torch(B)  # [N, K], [K, M]
    out = torch.empty(N, M)
    torch.matmul(Za, Zb, out=out)  # fault the pages in once

    def ours():
        return daunce_fast.topk(An, Bn, k, backend="cpu")

    def bare():
        torch.matmul(Za, Zb, out=out)

    def torch_way():
        s = standardise_torch(A).T @ standardise_torch(B)
        return torch.topk(s, k, dim=0)

    fns, cpu = with_cpu_time({"matmul (limit)": bare, "ours topk (cpu)": ours, "torch full + topk": torch_way})
    res = compare(fns, baseline="matmul (limit)", warmup=1, repeats=args.repeats)
    out = None  # free the [N, M] buffer (bare() is not called again)
    cpu_med = {name: float(np.median(v[1:])) for name, v in cpu.items()}  # [0] is the warm-up call
    if not args.skip_numpy:

        def numpy_way():
            s = standardise_numpy(An).T @ standardise_numpy(Bn)
            part = np.argpartition(-s, k - 1, axis=0)[:k]
            vals = np.take_along_axis(s, part, 0)
            order = np.argsort(-vals, axis=0)
            return np.take_along_axis(part, order, 0)

        t0, c0 = time.perf_counter(), time.process_time()
        numpy_way()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        res["numpy full + argpartition"] = {
            "median_s": t,
            "min_s": None,
            "ratio": t / res["matmul (limit)"]["median_s"],
        }
        cpu_med["numpy full + argpartition"] = c
    ours_t = res["ours topk (cpu)"]["median_s"]
    peak = peak_in_subprocess(K, N, M, k)
    # agreement with the torch way (top-k sets)
    v, i = ours()
    tv, ti = torch_way()
    same = np.mean([len(np.intersect1d(i[j], ti[:, j].numpy())) / k for j in range(M)])
    for name, r in res.items():
        rows.append(
            {
                "case": f"CPU K={K} N={N} M={M} k={k}",
                "what": name,
                "median_s": r["median_s"],
                "ratio_to_matmul": r["ratio"],
                "ours_speedup": r["median_s"] / ours_t,
                "cpu_s": cpu_med[name],
                "cpu_ratio_to_matmul": cpu_med[name] / cpu_med["matmul (limit)"],
                "cpu_ours_speedup": cpu_med[name] / cpu_med["ours topk (cpu)"],
            }
        )
    rows.append(
        {
            "case": f"CPU K={K} N={N} M={M} k={k}",
            "what": "topk peak extra RSS (MB)",
            "median_s": None,
            "ratio_to_matmul": None,
            "ours_speedup": None,
            "value": peak / 1e6,
            "note": f"full fp32 [N,M] would be {N * M * 4 / 1e6:.0f} MB; top-k sets equal to torch.topk: {same:.4f}",
        }
    )
    print(
        f"topk peak extra RSS: {peak / 1e6:.1f} MB (full matrix {N * M * 4 / 1e6:.0f} MB); "
        f"mean overlap with torch.topk sets: {same:.4f}"
    )


def disk_section(args, rows):
    K, N, M = 128, 200_000, 2_000
    if args.quick:
        N = 50_000
    A, B = losses(K, N, 2).numpy(), losses(K, M, 3).numpy()
    d = Path(args.dir or tempfile.mkdtemp(prefix="bench_corr_"))
    data = np.empty((N, M), np.float32)
    data[:] = 0.5  # the same bytes to save, already in memory
    p_ours, p_np = d / "scores.safetensors", d / "scores.npy"

    def ours():
        s = daunce_fast.correlate(A, B, out=p_ours, backend="cpu", resume=False)
        del s

    def np_save():
        np.save(p_np, data)

    def np_save_fsync():
        with open(p_np, "wb") as f:
            np.save(f, data)
            f.flush()
            os.fsync(f.fileno())

    # ours always ends with an fsync (the storage writer makes the file durable before renaming it
    # into place), so "numpy.save + fsync" is the like-for-like baseline; plain numpy.save is shown too.
    res = compare(
        {"numpy.save + fsync": np_save_fsync, "numpy.save": np_save, "ours correlate(out=PATH)": ours},
        baseline="numpy.save",
        warmup=1,
        repeats=max(2, args.repeats - 2),
    )
    for name, r in res.items():
        rows.append(
            {
                "case": f"disk K={K} N={N} M={M} fp32 ({N * M * 4 / 1e9:.1f} GB)",
                "what": name,
                "median_s": r["median_s"],
                "ratio_to_numpy_save": r["ratio"],
                "ratio_to_numpy_save_fsync": r["median_s"] / res["numpy.save + fsync"]["median_s"],
                "GB_per_s": N * M * 4 / 1e9 / r["median_s"],
                "times": [round(x, 3) for x in r["times"]],
            }
        )
    for p in (p_ours, p_np):
        p.unlink(missing_ok=True)


def gpu_section(args, rows):
    if not torch.cuda.is_available():
        print("--gpu: no CUDA device here; GPU section skipped")
        return
    dev = torch.device("cuda")
    K, N, M, k = 100, 1_000_000, 10_000, 100
    if args.quick:
        N = 200_000
    A, B = losses(K, N, 4, "cuda"), losses(K, M, 5, "cuda")
    Za, Zb = standardise_torch(A).T.contiguous(), standardise_torch(B)
    flop = 2.0 * N * M * K
    chunk = 65536
    buf = torch.empty(chunk, M, device=dev)

    def mm(precision_tf32):
        def f():
            torch.backends.cuda.matmul.allow_tf32 = precision_tf32
            for j0 in range(0, N, chunk):
                j1 = min(N, j0 + chunk)
                torch.matmul(Za[j0:j1], Zb, out=buf[: j1 - j0])

        return f

    fns = {"torch.matmul tf32": mm(True), "torch.matmul fp32": mm(False)}
    live = daunce_fast.available_backends()
    for be in ("triton", "cuda"):
        if be in live:
            for prec in ("tf32", "bf16", "fp32"):
                fns[f"topk {be} {prec}"] = lambda be=be, prec=prec: daunce_fast.topk(
                    A, B, k, backend=be, precision=prec
                )
    res = compare(fns, baseline="torch.matmul tf32", warmup=1, repeats=3)
    torch.backends.cuda.matmul.allow_tf32 = False
    # agreement on the first 200 test columns with a float64 reference
    from daunce_fast.correlation.reference import topk_reference

    ref_v, ref_i = topk_reference(A, B[:, :200], k)
    for name, r in res.items():
        row = {
            "case": f"GPU K={K} N={N} M={M} k={k}",
            "what": name,
            "median_s": r["median_s"],
            "TFLOP/s": flop / r["median_s"] / 1e12,
            "fraction_of_tf32_matmul": 1.0 / r["ratio"],
        }
        if name.startswith("topk"):
            _, be, prec = name.split()
            v, i = daunce_fast.topk(A, B[:, :200], k, backend=be, precision=prec)
            row["topk_set_overlap_vs_fp64"] = float(
                np.mean([len(np.intersect1d(i[j].cpu().numpy(), ref_i[j].cpu().numpy())) / k for j in range(200)])
            )
            row["max_value_err"] = float((v.double() - ref_v).abs().max())
        rows.append(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller N (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-numpy", action="store_true", help="skip the slow numpy + argpartition baseline")
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true", help="skip the CPU top-k section")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU section (needs CUDA)")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--dir", help="directory for the disk test (default: a new temp dir)")
    args = ap.parse_args()
    print(machine())
    rows = []
    if not args.gpu_only:
        if not args.skip_cpu:
            cpu_section(args, rows)
            print_table(
                [r for r in rows if r["case"].startswith("CPU")],
                [
                    "what",
                    "median_s",
                    "ratio_to_matmul",
                    "ours_speedup",
                    "cpu_s",
                    "cpu_ratio_to_matmul",
                    "cpu_ours_speedup",
                    "value",
                ],
            )
        if not args.skip_disk:
            disk_section(args, rows)
            print_table(
                [r for r in rows if r["case"].startswith("disk")],
                ["case", "what", "median_s", "ratio_to_numpy_save", "ratio_to_numpy_save_fsync", "GB_per_s", "times"],
            )
    if args.gpu or args.gpu_only:
        gpu_section(args, rows)
        print_table(
            [r for r in rows if r["case"].startswith("GPU")],
            ["what", "median_s", "TFLOP/s", "fraction_of_tf32_matmul", "topk_set_overlap_vs_fp64", "max_value_err"],
        )
    print("recorded in", record("correlation", rows))


if __name__ == "__main__":
    main()
