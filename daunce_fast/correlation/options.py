"""The correlation options as the public functions spell them, checked once: method, nan_policy,
precision, out_dtype, tile and k (correlate, topk and their rank-sharded versions share these checks)."""

from __future__ import annotations

import numpy as np
import torch

METHODS = ("pearson", "covariance")
NAN_POLICIES = ("raise", "propagate")
_PRECISIONS = {"fp32": "fp32", "float32": "fp32", "ieee": "fp32", "tf32": "tf32", "bf16": "bf16", "bfloat16": "bf16"}
OUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_tile(tile) -> int | None:
    """``tile``: None (automatic) or a positive int (train columns per tile); ValueError otherwise."""
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or int(tile) < 1:
        raise ValueError(f"tile must be None or a positive int (train columns per tile), got {tile!r}")
    return int(tile)


def check_k(k, N: int) -> int:
    """``k`` of a top-k over N train examples as an int: TypeError unless an int, ValueError
    outside [0, N]."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 0 or k > N:
        raise ValueError(f"k must be in [0, N] = [0, {N}], got k={k}")
    return k


def check_options(method: str, nan_policy: str, precision, tile=None) -> str | None:
    """Check method, nan_policy and tile (ValueError naming the bad one); returns the precision's
    canonical name ('fp32', 'tf32' or 'bf16'), or None when ``precision`` is None (backend default)."""
    check_tile(tile)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if precision is None:
        return None
    p = _PRECISIONS.get(str(precision).lower())
    if p is None:
        raise ValueError(f"precision must be None, 'fp32', 'tf32' or 'bf16', got {precision!r}")
    return p


def out_torch_dtype(out_dtype) -> torch.dtype:
    """The torch dtype of the scores for ``out_dtype`` (a name, "torch.float32"-style string or a
    torch dtype; float / double / half accepted); ValueError outside OUT_DTYPES."""
    name = str(out_dtype).replace("torch.", "")
    name = {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)
    if name not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {sorted(OUT_DTYPES)}, got {out_dtype!r}")
    return OUT_DTYPES[name]
