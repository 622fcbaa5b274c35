"""Evaluation metrics for attribution scores: LDS, recall@k, AUROC.

Scores follow the TDA layout and sign used everywhere in daunce_fast (and dattri, TRAK,
kronfluence): ``scores[i, j]`` for training example i and test example j, [N_train, N_test],
positive = training on i helped test example j (lowered its loss).

All functions accept numpy arrays or torch tensors (moved to CPU) and compute in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lds", "recall_at_k", "auroc"]


def _np(a, name: str) -> np.ndarray:
    if a is None:
        raise ValueError(f"{name} is None")
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _as_2d(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """[N] -> [N, 1] (and whether the input was 1-D)."""
    if a.ndim == 1:
        return a[:, None], True
    if a.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D array, got shape {a.shape}")
    return a, False


def _column_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, float64) of every column of the 2-D ``x``: tied values share the mean
    of the ranks they span, e.g. [10, 20, 20, 5] -> [2, 3.5, 3.5, 1] (scipy.stats.rankdata's
    "average", computed with numpy). A column holding a NaN gets NaN ranks throughout (as scipy's
    default nan_policy), so its correlation is NaN."""
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    if n == 0:
        return np.zeros((0, m))
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    pos = np.arange(n)[:, None]
    new_run = np.ones_like(xs, dtype=bool)
    new_run[1:] = xs[1:] != xs[:-1]  # a tie run starts where the sorted value changes
    run_end = np.ones_like(xs, dtype=bool)
    run_end[:-1] = new_run[1:]
    first = np.maximum.accumulate(np.where(new_run, pos, 0), axis=0)  # start of each run
    last = np.minimum.accumulate(np.where(run_end, pos, n)[::-1], axis=0)[::-1]  # end of each run
    ranks = np.empty_like(xs)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    ranks[:, np.isnan(x).any(0)] = np.nan
    return ranks


def _column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of a and b ([S, M] each) -> [M]; NaN for a constant column."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = (a * b).sum(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def lds(scores, subsets, targets) -> tuple[np.ndarray, float]:
    """Linear datamodeling score.

    Args:
        scores: [N_train, N_test] attribution scores, positive = helpful.
        subsets: [S, N_train] bool, subsets[s, i] = training example i was in subset s.
            (An integer index array [S, subset_size], dattri's layout, is accepted too.)
        targets: [S, N_test] the model retrained on subset s evaluated on test example j, with
            HIGHER = BETTER, e.g. the negative cross-entropy loss (dattri's convention:
            ``calculate_lds_ground_truth`` negates the loss). With positive = helpful scores, the
            predicted output ``pred = subsets.float() @ scores`` ([S, N_test]) then correlates
            positively with the target for a good attribution method.

    Returns:
        (per_test, mean): per_test[j] = spearman(pred[:, j], targets[:, j]) over the S subsets,
        [N_test] float64, NaN where either column is constant or scores[:, j] holds a non-finite
        value (dattri gives NaN there too); mean = nanmean(per_test) (NaN if every entry is NaN).
        Count the NaNs of per_test when comparing methods: the mean is over the others.

    Equivalent to ``dattri.metric.lds(scores, (targets, indices))[0]`` with
    ``indices[s] = subsets[s].nonzero()``.
    """
    s = _np(scores, "scores").astype(np.float64)
    t = _np(targets, "targets").astype(np.float64)
    m = _np(subsets, "subsets")
    if s.ndim != 2 or t.ndim != 2:
        raise ValueError(f"scores and targets must be 2-D, got {s.shape} and {t.shape}")
    n_train, n_test = s.shape
    if m.ndim != 2:
        raise ValueError(f"subsets must be 2-D [S, N_train] bool or [S, size] indices, got {m.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"subsets must be bool masks or integer indices, got dtype {m.dtype}")
        if m.size and (m.min() < 0 or m.max() >= n_train):
            raise ValueError("subset indices out of range")
        mask = np.zeros((m.shape[0], n_train), dtype=bool)
        np.put_along_axis(mask, m, True, axis=1)
        m = mask
    if m.shape[1] != n_train:
        raise ValueError(f"subsets has {m.shape[1]} columns but scores has {n_train} training rows")
    if t.shape != (m.shape[0], n_test):
        raise ValueError(f"targets must be [S={m.shape[0]}, N_test={n_test}], got {t.shape}")
    if m.shape[0] < 3:
        raise ValueError("need at least 3 subsets for a rank correlation")
    bad = ~np.isfinite(s).all(0)  # e.g. Pearson scores of a test example whose loss never varies
    if bad.any():
        s = np.where(np.isfinite(s), s, 0.0)
    pred = m.astype(np.float64) @ s  # [S, N_test]: predicted output of each subset
    per_test = _column_pearson(_column_ranks(pred), _column_ranks(t))
    per_test[bad] = np.nan  # as dattri: a non-finite score makes that test example's LDS NaN
    finite = ~np.isnan(per_test)
    mean = float(per_test[finite].mean()) if finite.any() else float("nan")
    return per_test, mean


def recall_at_k(scores, relevant, k: int) -> tuple[np.ndarray, float]:
    """Fraction of the relevant training examples found among the k highest-scoring ones.

    Args:
        scores: [N_train] or [N_train, N_test], higher = more responsible (e.g. most helpful for a
            backdoored prediction).
        relevant: bool, same shape as scores, or [N_train] shared by every test column (e.g. the
            poisoned training examples).
        k: how many top training examples to retrieve per test column (1 <= k <= N_train).

    Returns:
        (per_test [N_test] float64 ([1] for 1-D scores), mean over columns with at least one
        relevant example);
        per_test[j] = |topk_j ∩ relevant_j| / min(k, |relevant_j|), NaN when relevant_j is empty.
        Ties at the k-th score are broken by the lower training index (a stable sort).
    """
    s, _ = _as_2d(_np(scores, "scores").astype(np.float64))
    rel = _column_mask(relevant, "relevant", s.shape)
    n = s.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    order = np.argsort(-s, axis=0, kind="stable")[:k]  # [k, N_test]
    hits = np.take_along_axis(rel, order, axis=0).sum(0)
    n_rel = rel.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(n_rel > 0, hits / np.maximum(np.minimum(n_rel, k), 1), np.nan)
    finite = ~np.isnan(per)
    mean = float(per[finite].mean()) if finite.any() else float("nan")
    return per, mean


def _column_mask(mask, name: str, shape) -> np.ndarray:
    """A bool mask of ``shape`` [N, M]; a 1-D [N] mask is shared by every column."""
    m = _np(mask, name).astype(bool)
    if m.ndim == 1:
        m = np.broadcast_to(m[:, None], shape)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, scores {tuple(shape)}")
    return m


def auroc(scores, labels) -> tuple[np.ndarray, float]:
    """Area under the ROC curve of ``scores`` ranking the positive ``labels`` first.

    Args:
        scores: [N] or [N, M] (one ranking per column).
        labels: bool, same shape, or [N] shared by every column.

    Returns:
        (per_column [M] float64, mean ignoring NaN). Ties count one half (Mann-Whitney U with average
        ranks), as sklearn.metrics.roc_auc_score; NaN for a column with no positive or no negative.
    """
    s, _ = _as_2d(_np(scores, "scores").astype(np.float64))
    lab = _column_mask(labels, "labels", s.shape)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    ranks = _column_ranks(s)
    n_pos = lab.sum(0).astype(np.float64)
    n_neg = s.shape[0] - n_pos
    u = (ranks * lab).sum(0) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where((n_pos > 0) & (n_neg > 0), u / np.maximum(n_pos * n_neg, 1), np.nan)
    finite = ~np.isnan(per)
    mean = float(per[finite].mean()) if finite.any() else float("nan")
    return per, mean
