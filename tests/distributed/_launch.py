"""Start W ranks of tests/distributed/_worker.py on 127.0.0.1 with torchrun's environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port), wait for all of them with
a hard deadline, and return their exit codes and outputs (nothing is left running)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, outdir, world: int = 2, timeout_s: float = 20.0, deadline_s: float = 120.0, env=None):
    """Run ``scenario`` on ``world`` ranks. ``timeout_s``: the process group's collective timeout;
    ``deadline_s``: after this the test kills the ranks and fails (a hang is a failure).
    Returns (list of (returncode, stdout, stderr) per rank, seconds taken)."""
    port = free_port()
    procs = []
    t0 = time.monotonic()
    for rank in range(world):
        e = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
            DAUNCE_TEST_TIMEOUT=str(timeout_s),
            CUDA_VISIBLE_DEVICES="",
            **(env or {}),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.distributed._worker", scenario, str(outdir)],
                cwd=ROOT,
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            left = max(1.0, deadline_s - (time.monotonic() - t0))
            out, err = p.communicate(timeout=left)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                p.kill()
        dump = "\n".join(f"--- rank {r}\n{(p.communicate()[1] or '')[-2000:]}" for r, p in enumerate(procs))
        raise AssertionError(f"scenario {scenario!r} did not finish within {deadline_s}s (a hang):\n{dump}") from None
    return results, time.monotonic() - t0


def check_ok(results):
    for r, (rc, _out, err) in enumerate(results):
        assert rc == 0, f"rank {r} exited with {rc}:\n{err[-3000:]}"
