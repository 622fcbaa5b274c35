"""Every Triton kernel of the package compiles ahead of time for sm_90 (H100/H200), without a GPU.

The real compiler pipeline down to ptxas, over the launch variants of the launchers (dtypes,
constexprs, warps, stages; see tests/_triton_aot.py), catches what TRITON_INTERPRET cannot:
illegal tl.dot shapes or dtypes, type errors in loop-carried values, shared memory beyond what
a block may have. The compile runs in a subprocess: tests/conftest.py sets TRITON_INTERPRET=1
for this whole session, and the interpreter would stand in for the compiler.

Asserted: every variant compiles, its shared memory fits the H200's 227 KiB per block, and
every @triton.jit kernel in the package has at least one variant. Reported, not asserted:
registers and spills per thread, from ptxas's own log ("n/a" where this triton does not print it).

The default run compiles one variant per kernel and dtype family at the launchers' largest tiles
(24 variants, under a minute on 2 cores). The full sweep (~330 variants: every tile class,
rank padding, dtype pair and flag) is marked slow and runs when DAUNCE_FAST_AOT_FULL=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("triton")

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_triton_aot.py")
SMEM_PER_BLOCK = 227 * 1024  # sm_90 opt-in maximum of dynamic shared memory per block (232448 bytes)


def _compile(which: str, timeout: int) -> tuple[dict, list[dict]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    jobs = max(1, min(8, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="daunce_fast_aot_") as cache:
        env["TRITON_CACHE_DIR"] = cache  # empty cache: ptxas runs (and logs) for every variant
        out = subprocess.run(
            [sys.executable, str(SCRIPT), which, "90", str(jobs)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    lines = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
    if not lines:
        if "ptxas" in out.stderr and "not found" in out.stderr.lower():
            pytest.skip("no ptxas bundled with this triton")
        raise AssertionError(f"the AOT compile script printed nothing (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return lines[0], lines[1:]


def _table(rows: list[dict]) -> str:
    head = f"{'variant':78s} {'warps':>5s} {'smem KiB':>8s} {'regs':>5s} {'spill st/ld B':>14s} {'s':>5s}"
    out = [head]
    for r in rows:
        if not r["ok"]:
            out.append(f"{r['name'][:78]:78s} FAILED: {r['error'].splitlines()[0][:120] if r['error'] else ''}")
            continue
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        out.append(
            f"{r['name'][:78]:78s} {r['warps']:5d} {r['shared'] / 1024:8.1f} {str(r['regs']):>5s} "
            f"{spill:>14s} {r['seconds']:5.1f}"
        )
    return "\n".join(out)


def _check(which: str, timeout: int) -> None:
    head, rows = _compile(which, timeout)
    print(
        f"\nAOT compile for sm_{head['arch']} with triton {head['triton']} ({which} set, {head['variants']} variants; "
        "registers and spills per thread from ptxas -v):"
    )
    print(_table(rows))
    assert not head["uncovered"], (
        f"Triton kernels without an AOT variant: {head['uncovered']}; add their launch "
        "variants to tests/_triton_aot.py (or list a device helper in DEVICE_HELPERS)"
    )
    assert len(rows) == head["variants"], f"only {len(rows)} of {head['variants']} variants reported"
    failed = [r for r in rows if not r["ok"]]
    assert not failed, "compile errors:\n" + "\n\n".join(f"{r['name']}:\n{r['error']}" for r in failed)
    big = [f"{r['name']}: {r['shared']} bytes" for r in rows if r["shared"] > SMEM_PER_BLOCK]
    assert not big, f"shared memory above the {SMEM_PER_BLOCK} bytes a block may have on sm_90:\n" + "\n".join(big)


def test_kernels_compile_for_sm90():
    """One variant per kernel and dtype family at the launchers' largest tiles."""
    _check("default", timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DAUNCE_FAST_AOT_FULL") != "1",
    reason="full AOT sweep (~330 variants, minutes on 2 cores): set DAUNCE_FAST_AOT_FULL=1",
)
def test_kernels_compile_for_sm90_full_sweep():
    """Every tile class, rank padding, dtype pair and flag combination the launchers produce."""
    _check("full", timeout=3600)
