"""Helpers for testing kernels against float64 references (used by tests/ and by libraries
that build on daunce_fast).

Tolerances follow docs/numerics.md#tolerances: fp32 kernels are held near fp32 rounding of the reduction,
TF32/bf16/fp16 products to the peers' practice. Every comparison prints max and mean error
before asserting, so a failure shows by how much it missed.
"""

from __future__ import annotations

import math

import numpy as np

# (rtol, atol) per compute precision.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "tf32": (5e-3, 5e-4),
    "float16": (5e-3, 1e-3),
    "bfloat16": (3e-2, 1e-2),
}


def _name(dtype) -> str:
    s = str(dtype).replace("torch.", "")
    return {"half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16"}.get(s, s)


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for results computed in ``dtype`` (numpy / torch dtype or a name such as 'tf32')."""
    name = _name(dtype)
    if name not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[name]


def _np64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (any device / dtype, bf16 included)
        x = x.detach().to("cpu")
        import torch

        x = x.to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def error_stats(actual, reference) -> dict:
    a, r = _np64(actual), _np64(reference)
    if a.shape != r.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape} vs reference {r.shape}")
    both_nan = np.isnan(a) & np.isnan(r)
    diff = np.where(both_nan, 0.0, np.abs(a - r))
    rel = diff / np.maximum(np.abs(r), np.finfo(np.float64).tiny)
    finite = np.isfinite(diff)
    return {
        "max_abs": float(diff[finite].max()) if finite.any() else 0.0,
        "mean_abs": float(diff[finite].mean()) if finite.any() else 0.0,
        "max_rel": float(np.where(np.isfinite(rel), rel, 0).max()) if rel.size else 0.0,
        "n_mismatched_nan": int((np.isnan(a) ^ np.isnan(r)).sum()),
        "size": int(a.size),
    }


def assert_close_to_reference(actual, reference, dtype="float32", *, rtol=None, atol=None, scale=1.0, name="result"):
    """Assert ``|actual - reference| <= atol*scale + rtol*scale*|reference|`` elementwise.

    ``reference`` should be computed in float64. NaNs must sit at the same places. ``scale``
    widens both tolerances (e.g. sqrt of a reduction length). Prints the error statistics first.
    """
    d_rtol, d_atol = tolerance(dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a, r = _np64(actual), _np64(reference)
    st = error_stats(a, r)
    print(
        f"[{name}] dtype={_name(dtype)} size={st['size']} max_abs={st['max_abs']:.3e} "
        f"mean_abs={st['mean_abs']:.3e} max_rel={st['max_rel']:.3e} (rtol={rtol * scale:.1e}, atol={atol * scale:.1e})"
    )
    if st["n_mismatched_nan"]:
        raise AssertionError(f"{name}: NaN pattern differs at {st['n_mismatched_nan']} positions")
    both_nan = np.isnan(a) & np.isnan(r)
    bad = ~both_nan & ~(np.abs(a - r) <= atol * scale + rtol * scale * np.abs(r))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.size} elements out of tolerance; first at {idx}: "
            f"actual={a[idx]!r} reference={r[idx]!r}"
        )


def poison(x, value=math.nan):
    """Fill an output buffer (numpy array or torch tensor) with ``value`` so unwritten elements show."""
    if hasattr(x, "fill_"):
        return x.fill_(value)
    x.fill(value)
    return x
