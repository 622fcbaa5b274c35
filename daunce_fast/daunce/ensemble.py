"""Scores of several DAUNCE runs combined: one run per θ0 checkpoint (e.g. models trained from
different seeds), the way TRAK ensembles checkpoints.

Measured on the bundled LDS evaluation (bench/RESULTS.md): on digits, 5 checkpoints x 512 models
(0.457) beat one checkpoint x 8192 models (0.426) at a third of the compute; on breast_cancer the
ensemble was worse than one run (0.53 vs 0.55), as TRAK-5 is worse than TRAK-1 there. So it is an
option to measure on your task, not a default.
"""

from __future__ import annotations

import numpy as np


def ensemble_scores(runs, train="train", test=None, *, method: str | None = None) -> np.ndarray:
    """Mean over ``runs`` (fitted :class:`Daunce` objects, one per θ0 checkpoint, all recorded on
    the same train and test examples) of ``scores / scores.std()``, float64 [N_train, N_test]:

        sum_r S_r / std(S_r) / len(runs),   S_r = runs[r].scores(train, test, method=method)

    Each run is scaled by the standard deviation of its whole score matrix, because covariances of
    different checkpoints live on different scales; a constant (all-zero) matrix counts as zeros.
    NaN scores (Pearson, constant columns) count as 0.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("ensemble_scores: give at least one fitted Daunce run")
    if test is None:
        raise TypeError("ensemble_scores: give the test dataset (or the name of a recorded one)")
    total = None
    for run in runs:
        s = np.nan_to_num(np.asarray(run.scores(train, test, method=method), dtype=np.float64))
        sd = s.std()
        s = s / sd if sd > 0 else np.zeros_like(s)
        if total is not None and total.shape != s.shape:
            raise ValueError(f"ensemble_scores: runs disagree on the score shape: {total.shape} vs {s.shape}")
        total = s if total is None else total + s
    return total / len(runs)
