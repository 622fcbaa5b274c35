"""Float64 reference implementations (the oracle of the tests). Plain, readable torch.

Shapes: train A [K, N], test B [K, M] (row = model, column = example). Scores are [N, M]
(train x test, the layout of TDA tools; positive = the training example helped).

  mean_a = A.mean(0); Ac = A - mean_a;  (same for B)
  covariance[i, j] = (Ac[:, i] * Bc[:, j]).sum() / (K - 1)
  pearson[i, j]    = clip((Ac[:, i] / |Ac[:, i]|) . (Bc[:, j] / |Bc[:, j]|), -1, 1)

A constant column (see is_constant) has no correlation: NaN in pearson mode; its covariance is 0.
"""

from __future__ import annotations

import torch

EPS64 = torch.finfo(torch.float64).eps


def is_constant(mean: torch.Tensor, m2: torch.Tensor, K: int) -> torch.Tensor:
    """Columns whose spread is below what float64 rounding of the two-pass mean of K equal values
    can produce: std <= 8 K eps64 |mean| (or m2 == 0). Same rule as csrc/cpu/corr_standardise.cpp."""
    return (m2 <= 0) | (torch.sqrt(m2 / K) <= 8.0 * K * EPS64 * mean.abs())


def column_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, m2) of each column of x [K, n] in float64, two-pass: m2 = ((x - mean)**2).sum(0)."""
    x = x.to(torch.float64)
    mean = x.mean(0)
    return mean, ((x - mean) ** 2).sum(0)


def standardise_reference(x, method: str = "pearson") -> torch.Tensor:
    """Centred columns in float64; pearson: unit norm (NaN for constant columns)."""
    x = torch.as_tensor(x).to(torch.float64)
    mean, m2 = column_stats(x)
    xc = x - mean
    if method == "pearson":
        norm = torch.sqrt(m2)
        norm = torch.where(is_constant(mean, m2, x.shape[0]), torch.full_like(norm, float("nan")), norm)
        return xc / norm
    return xc


def correlate_reference(train, test, method: str = "pearson") -> torch.Tensor:
    """[N, M] float64 scores of every (train i, test j) pair."""
    a = standardise_reference(train, method)
    b = standardise_reference(test, method)
    s = a.T @ b
    if method == "pearson":
        return s.clamp(-1.0, 1.0)
    return s / (a.shape[0] - 1)


def topk_reference(train, test, k: int, method: str = "pearson", largest: bool = True):
    """(values [M, k] float64, indices [M, k] int64), best first; ties go to the lower train index;
    NaN scores are never selected (their slots are NaN / -1 when fewer than k remain)."""
    s = correlate_reference(train, test, method).T  # [M, N]
    key = s if largest else -s
    nan = torch.isnan(key)
    key = torch.where(nan, torch.full_like(key, float("-inf")), key)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.gather(s, 1, order)
    bad = torch.gather(nan, 1, order)
    values = torch.where(bad, torch.full_like(values, float("nan")), values)
    indices = torch.where(bad, torch.full_like(order, -1), order)
    return values, indices
