"""The random perturbation of each DAUNCE model, drawn from (seed, model index) alone, so a model
is the same whichever chunk or process trains it.

Model k: a subset D_k of round(ratio * N) training examples drawn without replacement, and
xi_ik ~ U(0, 1) for its members; per-example weights of the first-order term:
    "if":                  c_ik = 1 + rho * (2 xi_ik - 1)     (mean 1)
    "efim", "margin":      c_ik = rho * (2 xi_ik - 1)         (mean 0)
    "blackbox":            no first-order term (c unused)
With ``antithetic=True`` models 2j and 2j+1 share D and use xi and 1 - xi (their c are
reflections around the mean), a variance-reduction option.
"""
from __future__ import annotations

import numpy as np


def model_rng(seed: int, k: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(k), int(stream)]))


def subset_and_xi(seed: int, k: int, n: int, ratio: float, antithetic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted member indices [n_k] int64, xi [n_k] float64) of model k."""
    base = k - (k % 2) if antithetic else k
    rng = model_rng(seed, base, 1)
    n_k = max(1, int(round(ratio * n)))
    members = np.sort(rng.choice(n, size=n_k, replace=False)) if n_k < n else np.arange(n)
    xi = rng.random(n_k)
    if antithetic and k % 2:
        xi = 1.0 - xi
    return members.astype(np.int64), xi


def weights_c(objective: str, rho: float, xi: np.ndarray) -> np.ndarray:
    if objective == "if":
        return 1.0 + rho * (2.0 * xi - 1.0)
    if objective in ("efim", "margin"):
        return rho * (2.0 * xi - 1.0)
    return np.zeros_like(xi)


def epoch_order(seed: int, k: int, epoch: int, n_k: int) -> np.ndarray:
    """Order in which model k visits its subset members in ``epoch`` (positions into D_k)."""
    return model_rng(seed, k, 1000 + epoch).permutation(n_k)
