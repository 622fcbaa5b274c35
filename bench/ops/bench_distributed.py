"""Strong scaling of daunce_fast.distributed.topk: the same problem on 1 rank (all cores) and on
W ranks (gloo, one core each), on this machine. Default: K=128, N=200,000, M=1,000, k=100.

Rows: df.topk in one process with all cores (the baseline, speedup 1), distributed.topk on one
rank, df.topk in one process with one core's share of threads, and distributed.topk on W ranks.
The inputs are written once to one safetensors file that every rank memory-maps (as the pipeline's
loss stores are). Each rank is a process started like torchrun (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT on 127.0.0.1); a run's time is the slowest rank's, from a barrier before the call to
one after it (cpu_s: CPU seconds summed over the ranks, which shows the work done whatever the
machine's load), so it includes the all_gather of the [M, k] candidates and the merge, not the start
of the processes. Rows alternate (1, W, 1, W, ...) so the machine's load hits both alike; the load
average is printed before and after.

    python bench/ops/bench_distributed.py [--world 2] [--repeats 3] [--n 200000] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]  # bench/: the shared harness
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))


def _worker(path: str, k: int, repeats: int, single: bool) -> None:
    import numpy as np
    import torch

    from daunce_fast import distributed as D
    from daunce_fast import storage

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rank, world = D.init_from_env(timeout_s=600)
    r = storage.open(path)
    A, B = r["A"], r["B"]
    times, cpu = [], []
    for _ in range(repeats):
        D.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        if single:  # the plain single-process call, as the baseline
            import daunce_fast as df

            res = df.topk(A, B, k)
        else:
            res = D.topk(A, B, k)
        c1 = time.process_time()  # this process's CPU seconds (all its threads), before waiting for the others
        D.barrier()
        times.append(time.perf_counter() - t0)
        cpu.append(c1 - c0)
    print(json.dumps({"times": times, "cpu": cpu, "checksum": int(np.asarray(res.indices).sum())}))
    D.shutdown()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(path, world, threads, k, repeats, single=False) -> dict:
    port, procs = _port(), []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=str(threads),
            PYTHONPATH=str(ROOT),
            CUDA_VISIBLE_DEVICES="",
        )
        args = [sys.executable, __file__, "--worker", path, "--k", str(k), "--repeats", str(repeats)]
        procs.append(
            subprocess.Popen(
                args + (["--single"] if single else []),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=3600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"a rank failed:\n{err[-3000:]}")
    per_rank = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    return {
        "times": per_rank[0]["times"],
        "checksum": per_rank[0]["checksum"],
        "cpu": [sum(r["cpu"][i] for r in per_rank) for i in range(len(per_rank[0]["cpu"]))],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--single", action="store_true")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--m", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=100)
    a = ap.parse_args()
    if a.worker:
        return _worker(a.worker, a.k, a.repeats, a.single)

    import numpy as np
    from harness import machine, print_table, record

    from daunce_fast import storage

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as d:
        path = os.path.join(d, "inputs.safetensors")
        rng = np.random.default_rng(0)
        with storage.create(path, {"A": ((a.K, a.n), "float32"), "B": ((a.K, a.m), "float32")}) as w:
            for j0 in range(0, a.n, 50_000):
                w["A"][:, j0 : j0 + 50_000] = rng.standard_normal((a.K, min(50_000, a.n - j0)), dtype=np.float32)
            w["B"][...] = rng.standard_normal((a.K, a.m), dtype=np.float32)
        load0 = os.getloadavg()
        per = max(1, cores // a.world)
        configs = (
            (f"df.topk, 1 process x {cores} threads", 1, cores, True),
            (f"distributed.topk, 1 rank x {cores} threads", 1, cores, False),
            (f"df.topk, 1 process x {per} thread(s)", 1, per, True),
            (f"distributed.topk, {a.world} ranks x {per} thread(s)", a.world, per, False),
        )
        runs = {c[0]: [] for c in configs}
        cpus = {c[0]: [] for c in configs}
        sums = set()
        for _ in range(a.rounds):
            for name, world, threads, single in configs:
                out = _launch(path, world, threads, a.k, a.repeats, single)
                runs[name] += out["times"]
                cpus[name] += out["cpu"]
                sums.add(out["checksum"])
        load1 = os.getloadavg()
    base = statistics.median(runs[configs[0][0]])
    rows = [
        {
            "run": name,
            "K": a.K,
            "N": a.n,
            "M": a.m,
            "k": a.k,
            "median_s": statistics.median(t),
            "min_s": min(t),
            "speedup": base / statistics.median(t),
            "cpu_s": statistics.median(cpus[name]),
            "times": [round(x, 3) for x in t],
            "load_before": load0[0],
            "load_after": load1[0],
        }
        for name, t in runs.items()
    ]
    print(f"machine: {machine()}")
    print(
        f"load average before {load0}, after {load1} on {cores} cores; identical indices in all runs: {len(sums) == 1}"
    )
    print_table(rows, ["run", "K", "N", "M", "k", "median_s", "min_s", "speedup", "cpu_s", "times"])
    record("distributed_topk_scaling", rows)


if __name__ == "__main__":
    main()
