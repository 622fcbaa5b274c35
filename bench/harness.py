"""Shared benchmark harness.

- ``compare({name: fn}, repeats=..)``: warms each function up, then runs them interleaved
  (round-robin) so machine noise hits all alike, and reports medians and ratios to a baseline.
- ``peak_rss_delta(fn)``: peak extra resident memory of ``fn`` on Linux (clear_refs + VmHWM).
- ``record(bench, rows)``: appends JSON lines with machine, versions and git sha to
  bench/out/results.jsonl; ``print_table`` prints the rows.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("DAUNCE_FAST_BENCH_OUT", HERE / "out"))


def _sync():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def timeit(fn: Callable, warmup: int = 1, repeats: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    _sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "times": ts}


def compare(fns: dict, baseline: str | None = None, warmup: int = 1, repeats: int = 5) -> dict:
    """Time every function, interleaved; return {name: {median_s, min_s, ratio}}; ratio = median / baseline's."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    base = baseline or next(iter(fns))
    bmed = statistics.median(times[base])
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "ratio": statistics.median(v) / bmed, "times": v}
        for k, v in times.items()
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def peak_rss_delta(fn: Callable) -> tuple[object, int]:
    """Run ``fn()``; return (its result, peak resident bytes above the RSS at the start).

    Resets the kernel's high-water mark through /proc/self/clear_refs (Linux); elsewhere returns -1.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _status_kib("VmRSS")
    except OSError:
        return fn(), -1
    res = fn()
    return res, (_status_kib("VmHWM") - start) * 1024


def machine() -> dict:
    info = {
        "host": platform.node(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import numpy
        import torch

        info.update(torch=torch.__version__, numpy=numpy.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        pass
    try:
        info["git_sha"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if dirty:
            info["git_sha"] += "+dirty"
    except Exception:
        info["git_sha"] = "unknown"
    return info


def record(bench: str, rows: list[dict]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.jsonl"
    m = machine()
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({"bench": bench, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **m, **row}) + "\n")
    return path


def print_table(rows: list[dict], cols: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
