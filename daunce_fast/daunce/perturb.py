"""The random perturbation of each DAUNCE model, drawn from (seed, model index) alone, so a model
is the same whichever chunk or process trains it.

Model k: a subset D_k of round(ratio * N) training examples drawn without replacement, and
xi_ik ~ U(0, 1) for its members; per-example weights of the first-order term:
    "if":                  c_ik = 1 + rho * (2 xi_ik - 1)     (mean 1)
    "efim", "margin":      c_ik = rho * (2 xi_ik - 1)         (mean 0)
    "blackbox":            no first-order term (c unused)
With ``antithetic=True`` models 2j and 2j+1 share D and use xi and 1 - xi (their c are
reflections around the mean), a variance-reduction option.

perturbation "hessian" (objective "if", cross-entropy): c_ik = 1, and model k's first-order
direction on member i is g0_i + s_k * rho * u_ik with u_ik ~ N(0, diag(p0_i) - p0_i p0_iᵀ), the
Hessian of the cross-entropy in the logits at θ0 (see heads.hessian_direction); the normals come
from ``hashed_normal(seed, k, i)``; s_k = +1, or -1 for the odd model of an antithetic pair (same
subset, same normals).
"""

from __future__ import annotations

import numpy as np


def model_rng(seed: int, k: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(k), int(stream)]))


def pair_base(k: int, antithetic: bool) -> int:
    """The model whose subset and draws model k shares: itself, or the even model of its pair."""
    return k - (k % 2) if antithetic else k


def subset_size(n: int, ratio: float) -> int:
    """Examples in each model's subset: ``max(1, round(ratio * n))``."""
    return max(1, int(round(ratio * n)))


def subset_and_xi(seed: int, k: int, n: int, ratio: float, antithetic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted member indices [n_k] int64, xi [n_k] float64) of model k."""
    rng = model_rng(seed, pair_base(k, antithetic), 1)
    n_k = subset_size(n, ratio)
    members = np.sort(rng.choice(n, size=n_k, replace=False)) if n_k < n else np.arange(n)
    xi = rng.random(n_k)
    if antithetic and k % 2:
        xi = 1.0 - xi
    return members.astype(np.int64), xi


def noise_id_and_sign(k: int, antithetic: bool = False) -> tuple[int, float]:
    """(id whose normals model k uses, sign s_k) for perturbation "hessian"."""
    return pair_base(k, antithetic), (-1.0 if antithetic and k % 2 else 1.0)


def weights_c(objective: str, rho: float, xi: np.ndarray, perturbation: str = "xi") -> np.ndarray:
    if perturbation == "hessian":
        return np.ones_like(xi)
    if objective == "if":
        return 1.0 + rho * (2.0 * xi - 1.0)
    if objective in ("efim", "margin"):
        return rho * (2.0 * xi - 1.0)
    return np.zeros_like(xi)


def epoch_order(seed: int, k: int, epoch: int, n_k: int) -> np.ndarray:
    """Order in which model k visits its subset members in ``epoch`` (positions into D_k)."""
    return model_rng(seed, k, 1000 + epoch).permutation(n_k)


# splitmix64 constants as signed int64 (torch has no uint64 arithmetic; products wrap mod 2^64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _lsr(x, s: int):
    """Logical right shift of int64 (torch's >> is arithmetic: sign bits are masked off)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x):
    """splitmix64's finaliser: a bijective scramble of 64-bit keys."""
    x = x + _GOLDEN
    x = (x ^ _lsr(x, 30)) * _M1
    x = (x ^ _lsr(x, 27)) * _M2
    return x ^ _lsr(x, 31)


def hashed_normal(seed: int, model_ids, example_idx, num_classes: int):
    """Standard normals [K, b, C] float32 that depend on (seed, model id, example index, class) only.

    model_ids [K] int64, example_idx [K, b] int64 (global training-example indices), on any
    device. Counter-based (splitmix64 hash, Box-Muller), so the draw of model k on example i is
    the same in every epoch, chunk, process and device, with no [K, N, C] table in memory.
    """
    import torch

    dev = example_idx.device
    key = _mix(
        _mix(torch.full((), int(seed), dtype=torch.int64, device=dev) + 0x5EED)
        + model_ids.to(device=dev, dtype=torch.int64)
    )
    key = _mix(key[:, None] + example_idx.to(torch.int64))
    cls = torch.arange(num_classes, dtype=torch.int64, device=dev)
    h = _mix(key[..., None] * num_classes + cls)
    hi = _lsr(h, 32).to(torch.float64)
    lo = (h & 0xFFFFFFFF).to(torch.float64)
    u1 = (hi + 1.0) * 2.0**-32  # (0, 1]: log is finite
    u2 = lo * 2.0**-32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)).to(torch.float32)
