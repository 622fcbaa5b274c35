"""Standardisation of [K, n] tiles and the errors it finds.

``standardise_torch`` is the float64 standardisation of the torch-based engines (torch, triton,
cuda); the CPU engine uses the compiled kernels instead (C.colstats + C.corr_standardise), with the
same rule for constants (reference.is_constant). A non-finite input raises NonFiniteInputError,
whose fields (matrix, model, column, value) let a caller that correlated a column block name the
global column (``at_offset``) without parsing the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .reference import is_constant


@dataclass
class TileStats:
    """Standardised tile plus what the driver needs to report."""

    z: object  # numpy or torch, [K, n]
    first_bad: int  # flat index j*K + k of the first non-finite entry (example-major), or -1
    constant: np.ndarray  # bool [n]
    overflow: int = -1  # first column (within the tile) whose finite values overflow float64 stats, or -1


def first_stats_overflow(x, mean, m2) -> int:
    """First column of x [K, n] whose values are all finite but whose mean or m2 is not (float64
    overflow, values near the float64 limit), or -1. numpy or torch arguments."""
    if isinstance(x, torch.Tensor):
        bad = ~(torch.isfinite(mean) & torch.isfinite(m2))
        if not bool(bad.any()):
            return -1
        hit = torch.nonzero(bad & torch.isfinite(x).all(0))
        return int(hit[0, 0]) if hit.numel() else -1
    bad = ~(np.isfinite(mean) & np.isfinite(m2))
    if not bad.any():
        return -1
    cols = np.nonzero(bad)[0]
    ok = np.isfinite(x[:, cols]).all(0)
    return int(cols[ok][0]) if ok.any() else -1


def first_nonfinite_torch(x: torch.Tensor) -> int:
    """j*K + k of the first non-finite entry of x [K, n] ordered by (example j, model k), or -1."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return -1
    flat = torch.nonzero(bad.T.reshape(-1))[0, 0]
    return int(flat)


def standardise_torch(x: torch.Tensor, pearson: bool, factor: float, dtype: torch.dtype) -> TileStats:
    """Float64 statistics and centring (then ``dtype``): pearson -> unit-norm columns times factor,
    NaN for constant ones; covariance -> centred columns times factor."""
    K = x.shape[0]
    bad = first_nonfinite_torch(x) if x.numel() else -1
    x64 = x.to(torch.float64)
    mean = x64.mean(0)
    xc = x64 - mean
    m2 = (xc * xc).sum(0)
    const = is_constant(mean, m2, K)
    if pearson:
        scale = factor / torch.sqrt(m2)
        scale = torch.where(const, torch.full_like(scale, float("nan")), scale)
    else:
        scale = torch.full_like(m2, factor)
    z = (xc * scale).to(dtype)
    return TileStats(z, bad, const.cpu().numpy(), first_stats_overflow(x, mean, m2))


class NonFiniteInputError(ValueError):
    """A NaN or infinite entry of an input matrix under ``nan_policy='raise'``: ``matrix`` (its name,
    e.g. "train"), ``model`` (row k), ``column`` (example j, counted in the matrix that was passed)
    and ``value`` (the entry, a float). The message names them and the option that lets NaN flow."""

    def __init__(self, matrix: str, model: int, column: int, value: float):
        self.matrix, self.model, self.column, self.value = matrix, int(model), int(column), value
        super().__init__(
            f"{matrix} has a non-finite value {value} at model {self.model}, example {self.column} "
            f"({matrix}[{self.model}, {self.column}]); pass nan_policy='propagate' to let NaN flow "
            f"into the scores"
        )

    def __reduce__(self):  # picklable with its fields (ValueError would pass only the message)
        return type(self), (self.matrix, self.model, self.column, self.value)

    def at_offset(self, offset: int) -> NonFiniteInputError:
        """The same error for a caller that passed columns [offset, ...) of its own matrix."""
        return NonFiniteInputError(self.matrix, self.model, self.column + int(offset), self.value)


def nonfinite_error(src, flat: int, j0: int, value) -> NonFiniteInputError:
    """The error for entry ``flat`` = j*K + k (example-major, see first_nonfinite_torch) of the tile
    of ``src`` (a Source) starting at column ``j0``."""
    j, k = divmod(int(flat), src.K)
    return NonFiniteInputError(src.name, k, j0 + j, value)


def overflow_error(name: str, column: int, values) -> ValueError:
    """The error for a column of finite values whose float64 mean or variance overflows."""
    peak = float(np.max(np.abs(np.asarray(values, dtype=np.float64)))) if np.size(values) else float("nan")
    return ValueError(
        f"{name} column {column} (example {column}) has finite values (largest magnitude {peak:.3g}) but "
        f"its mean or variance overflows float64, so it cannot be standardised; rescale the matrix (e.g. "
        f"divide it by its largest absolute value: Pearson scores do not change, covariances scale by "
        f"the square of the factor)"
    )
