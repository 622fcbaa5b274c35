"""The two CPU misses of issue 4 (issue 17, item 4), measured side by side with the load printed.

cpu   top-k vs the bare matmul (K=128, N=200,000, M=1,000, k=100, as bench_correlation.py):
      per round and per thread count (torch.set_num_threads, 1 and 2 by default), the bare
      torch.matmul of the standardised [N,K]x[K,M] into a preallocated out= and topk(backend="cpu"),
      back to back; medians over the rounds, the paired ratio (median of per-round ratios), process
      CPU time, and the 1-minute load average at each call.
disk  the full [N, M] matrix to a file (K=128, N=200,000, M=2,000 fp32 = 1.6 GB by default):
      the disk's own speed (dd from /dev/zero with and without conv=fsync; pwrite of an in-memory
      buffer in 1, 4, 16, 64 MiB calls + fsync), numpy.save with and without fsync, the product alone
      (correlate into a preallocated array: no disk) and correlate(out=PATH), interleaved, with the
      writer's own breakdown (time the product waited for a free buffer, pwrite and fsync+journal
      time in the writer thread) from daunce_fast.correlation.api.last_write_stats.

  python bench/ops/bench_cpu_misses.py [--section cpu|disk|all] [--repeats 5] [--threads 1,2]
                                       [--N-disk 200000] [--dir DIR] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(Path(__file__).resolve().parent)]
from bench_correlation import losses, standardise_torch  # noqa: E402
from harness import machine, print_table, record  # noqa: E402

import daunce_fast  # noqa: E402
from daunce_fast.correlation import api as corr_api  # noqa: E402


def load1() -> float:
    return os.getloadavg()[0]


def timed(fn):
    """(wall s, process CPU s, load before) of one call."""
    ld = load1()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0, ld


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------------ cpu
def cpu_section(args, rows):
    K, N, M, k = 128, args.N_cpu, 1_000, 100
    A, B = losses(K, N, 0), losses(K, M, 1)
    An, Bn = A.numpy(), B.numpy()
    Za, Zb = standardise_torch(A).T.contiguous(), standardise_torch(B)
    out = torch.empty(N, M)
    out.fill_(0)  # fault the pages in once
    threads = [int(t) for t in args.threads.split(",")]

    def bare():
        torch.matmul(Za, Zb, out=out)

    fns = {"matmul (limit)": bare}
    for v in args.variants.split(","):
        fns[f"topk {v}"] = variant(v, An, Bn, k)
    names = list(fns)
    res = {(t, n): [] for t in threads for n in names}
    for t in threads:  # warm-up
        torch.set_num_threads(t)
        for fn in fns.values():
            fn()
    for r in range(args.repeats):
        for t in threads:
            torch.set_num_threads(t)
            for n in names:
                res[(t, n)].append(timed(fns[n]))
        print(f"round {r}: " + "  ".join(f"{t}t {n} {res[(t, n)][-1][0]:.3f}" for t in threads for n in names))
    torch.set_num_threads(max(threads))
    for t in threads:
        base = res[(t, names[0])]
        for n in names:
            xs = res[(t, n)]
            paired = [x[0] / b[0] for x, b in zip(xs, base)]
            rows.append(
                {
                    "case": f"cpu K={K} N={N} M={M} k={k}",
                    "threads": t,
                    "what": n,
                    "median_s": med([x[0] for x in xs]),
                    "ratio": med([x[0] for x in xs]) / med([b[0] for b in base]),
                    "paired_ratio": med(paired),
                    "cpu_s": med([x[1] for x in xs]),
                    "cpu_ratio": med([x[1] for x in xs]) / med([b[1] for b in base]),
                    "load": f"{min(x[2] for x in xs):.1f}-{max(x[2] for x in xs):.1f}",
                    "times": [round(x[0], 3) for x in xs],
                }
            )


def variant(v, An, Bn, k):
    """topk with one threading policy. 'default': as shipped. 'unfused': torch.matmul per tile +
    corr_select_tile (DAUNCE_FAST_CORR_FUSED=0 path). 'static': the fused kernel with the env knob
    DAUNCE_FAST_CORR_SCHEDULE=static (if the build has it)."""
    from daunce_fast.correlation import cpu_launch

    def run():
        saved = cpu_launch.blas_sgemm
        try:
            if v == "unfused":
                cpu_launch.blas_sgemm = lambda: 0
            return daunce_fast.topk(An, Bn, k, backend="cpu")
        finally:
            cpu_launch.blas_sgemm = saved

    return run


# ----------------------------------------------------------------------------------------- disk
def dd(path: Path, nbytes: int, fsync: bool) -> None:
    mib = nbytes >> 20
    cmd = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "status=none"]
    if fsync:
        cmd.append("conv=fsync")
    subprocess.run(cmd, check=True)


def pwrite_all(path: Path, data: np.ndarray, block: int, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data.reshape(-1).view(np.uint8))
        pos = 0
        while pos < len(view):
            pos += os.pwrite(fd, view[pos : pos + block], pos)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def disk_section(args, rows):
    K, N, M = 128, args.N_disk, 2_000
    nbytes = N * M * 4
    A, B = losses(K, N, 2).numpy(), losses(K, M, 3).numpy()
    d = Path(args.dir or tempfile.mkdtemp(prefix="bench_cpu_misses_"))
    data = np.full((N, M), 0.5, np.float32)
    dest = np.empty((N, M), np.float32)
    dest.fill(0)
    p_ours, p_np, p_raw = d / "scores.safetensors", d / "scores.npy", d / "raw.bin"

    def rm(*ps):
        for p in ps:
            p.unlink(missing_ok=True)

    def np_save(fsync):
        def f():
            with open(p_np, "wb") as fh:
                np.save(fh, data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())

        return f

    stats = []

    def ours(call_mib, early, in_writer, keep_stats=False):
        def f():
            saved = corr_api._WRITE_CALL_BYTES, corr_api._EARLY_WRITEBACK, corr_api._MARK_IN_WRITER
            corr_api._WRITE_CALL_BYTES, corr_api._EARLY_WRITEBACK, corr_api._MARK_IN_WRITER = (
                call_mib << 20,
                early,
                in_writer,
            )
            try:
                daunce_fast.correlate(A, B, out=p_ours, backend="cpu", resume=False)
            finally:
                corr_api._WRITE_CALL_BYTES, corr_api._EARLY_WRITEBACK, corr_api._MARK_IN_WRITER = saved
            stats.append((f"{call_mib}/{early}/{in_writer}", dict(corr_api.last_write_stats)))

        return f

    fns = {
        "dd bs=1M": lambda: dd(p_raw, nbytes, False),
        "dd bs=1M conv=fsync": lambda: dd(p_raw, nbytes, True),
        "numpy.save": np_save(False),
        "numpy.save + fsync": np_save(True),
        "product alone (correlate into an array)": lambda: daunce_fast.correlate(A, B, out=dest, backend="cpu"),
    }
    # ours as before this change (64 MiB pwrites, no early writeback, the caller waits for each
    # fsync), then with early writeback and marks in the writer thread at each pwrite size
    fns["ours, old writer (64 MiB, fsync in caller)"] = ours(64, False, False)
    for mib in [int(x) for x in args.ours_sizes.split(",") if x]:
        fns[f"ours, {mib} MiB pwrites + early writeback"] = ours(mib, True, True)
    for mib in [int(x) for x in args.write_sizes.split(",") if x]:
        fns[f"pwrite {mib} MiB + fsync"] = lambda mib=mib: pwrite_all(p_raw, data, mib << 20, True)
    names = list(fns)
    res = {n: [] for n in names}
    # Every call starts from no file (each writes a fresh one; dirty pages of the previous call are
    # flushed first so that one call's writeback does not land in the next one's time).
    for r in range(args.repeats + 1):
        for n in names:
            rm(p_ours, p_np, p_raw)
            os.sync()
            x = timed(fns[n])
            if r:  # round 0 is the warm-up
                res[n].append(x)
        if r:
            print(f"round {r}: " + "  ".join(f"{n} {res[n][-1][0]:.2f}" for n in names), flush=True)
    rm(p_ours, p_np, p_raw)
    base = res["numpy.save"]
    base_f = res["numpy.save + fsync"]
    for n in names:
        xs = res[n]
        rows.append(
            {
                "case": f"disk K={K} N={N} M={M} fp32 ({nbytes / 1e9:.2f} GB)",
                "what": n,
                "median_s": med([x[0] for x in xs]),
                "GB_per_s": nbytes / 1e9 / med([x[0] for x in xs]),
                "ratio_np_save": med([x[0] / b[0] for x, b in zip(xs, base)]),
                "ratio_np_save_fsync": med([x[0] / b[0] for x, b in zip(xs, base_f)]),
                "load": f"{min(x[2] for x in xs):.1f}-{max(x[2] for x in xs):.1f}",
                "times": [round(x[0], 2) for x in xs],
            }
        )
    by = {}
    for cfg, st in stats:
        by.setdefault(cfg, []).append(st)
    for cfg, sts in by.items():
        sts = sts[1:]  # the warm-up call
        row = {"case": "disk breakdown of ours (writer stats, medians)", "what": f"MiB/early/in_writer {cfg}"}
        for kk in ("total", "compute", "wait_buffer", "clip", "pwrite", "sync_range", "mark", "close"):
            row[kk] = med([s.get(kk, 0.0) for s in sts])
        rows.append(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", default="all", choices=["cpu", "disk", "all"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--variants", default="default", help="comma list: default, unfused")
    ap.add_argument("--N-cpu", type=int, default=200_000)
    ap.add_argument("--N-disk", type=int, default=200_000)
    ap.add_argument("--write-sizes", default="1,4,16,64", help="MiB per pwrite call in the raw write test")
    ap.add_argument("--ours-sizes", default="4", help="MiB per pwrite call of ours (with early writeback)")
    ap.add_argument("--dir", help="directory for the disk test (default: a new temp dir)")
    args = ap.parse_args()
    info = machine()
    info["load"] = os.getloadavg()
    info["affinity"] = sorted(os.sched_getaffinity(0))
    print(info)
    rows = []
    if args.section in ("cpu", "all"):
        cpu_section(args, rows)
        print_table(
            [r for r in rows if r["case"].startswith("cpu")],
            ["threads", "what", "median_s", "ratio", "paired_ratio", "cpu_s", "cpu_ratio", "load", "times"],
        )
    if args.section in ("disk", "all"):
        disk_section(args, rows)
        print_table(
            [r for r in rows if r["case"].startswith("disk K")],
            ["what", "median_s", "GB_per_s", "ratio_np_save", "ratio_np_save_fsync", "load", "times"],
        )
        print_table(
            [r for r in rows if r["case"].startswith("disk b")],
            ["what", "total", "compute", "wait_buffer", "clip", "pwrite", "sync_range", "mark", "close"],
        )
    print("recorded in", record("cpu_misses", rows))


if __name__ == "__main__":
    main()
