"""Shared checks for the correlation tests: top-k results against a float64 score matrix."""

from __future__ import annotations

import numpy as np
import torch

from daunce_fast._backends import available_backends


def live_cpu_backends():
    """Backends that run on CPU data here (triton is tested separately under the interpreter)."""
    return [b for b in ("torch", "cpu") if b in available_backends()]


def np64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def assert_topk_matches(values, indices, ref_scores, k, *, largest=True, tol=1e-5, name="topk"):
    """values/indices [M, k] against ref_scores [N, M] float64: same values within tol, indices
    consistent with the values, best first, no repeats, and the index set equal to the reference's
    except swaps among scores within tol of the k-th best."""
    v, i, s = np64(values).astype(np.float64), np64(indices), np.asarray(ref_scores, np.float64)
    N, M = s.shape
    assert v.shape == (M, k) and i.shape == (M, k), (v.shape, i.shape, (M, k))
    worst = 0.0
    for j in range(M):
        col = s[:, j] if largest else -s[:, j]
        valid = ~np.isnan(col)
        nsel = min(k, int(valid.sum()))
        # slots beyond the selectable ones: NaN / -1
        assert np.all(i[j, nsel:] == -1) and np.all(np.isnan(v[j, nsel:])), f"{name}: column {j} padding"
        sel = i[j, :nsel]
        assert np.all(sel >= 0) and np.all(sel < N), f"{name}: column {j} index out of range"
        assert len(np.unique(sel)) == nsel, f"{name}: column {j} repeats an index"
        assert valid[sel].all(), f"{name}: column {j} selected a NaN score"
        got = v[j, :nsel] if largest else -v[j, :nsel]
        assert np.all(np.diff(got) <= tol), f"{name}: column {j} not best first"
        err = np.abs(got - col[sel])
        worst = max(worst, float(err.max()) if nsel else 0.0)
        assert np.all(err <= tol), f"{name}: column {j} values off by {err.max():.3e} (tol {tol:.1e})"
        if nsel == 0:
            continue
        ref_sorted = np.sort(col[valid])[::-1]
        kth = ref_sorted[nsel - 1]
        assert np.all(col[sel] >= kth - tol), f"{name}: column {j} selected a score below the k-th best"
        rest = np.ones(N, bool)
        rest[sel] = False
        rest &= valid
        assert np.all(col[rest] <= kth + tol), f"{name}: column {j} left out a score above the k-th best"
        np.testing.assert_allclose(got, ref_sorted[:nsel], atol=tol, rtol=0)
    print(f"[{name}] M={M} k={k} max |value - ref| = {worst:.3e} (tol {tol:.1e})")
