"""daunce_fast.evaluation.metrics on hand-computed cases, and against scipy, sklearn and dattri (where installed) on small
random cases. metrics itself needs only numpy."""

import numpy as np
import pytest
import torch

from daunce_fast.evaluation.metrics import auroc, lds, recall_at_k


def _case(rng, n_train=40, n_test=7, S=30):
    scores = rng.standard_normal((n_train, n_test))
    subsets = np.zeros((S, n_train), dtype=bool)
    for s in range(S):
        subsets[s, rng.permutation(n_train)[: n_train // 2]] = True
    # targets partly explained by the scores, so LDS is clearly positive
    targets = subsets.astype(float) @ scores + 2.0 * rng.standard_normal((S, n_test))
    return scores, subsets, targets


def test_column_ranks_average_ties_by_hand():
    from daunce_fast.evaluation.metrics import _column_ranks

    x = np.array([[10.0, 1.0], [20.0, 1.0], [20.0, 1.0], [5.0, 0.0]])
    np.testing.assert_array_equal(_column_ranks(x), [[2, 3], [3.5, 3], [3.5, 3], [1, 1]])
    x[0, 1] = np.nan  # a NaN voids its column's ranks (then its correlation is NaN)
    r = _column_ranks(x)
    assert np.isnan(r[:, 1]).all() and np.array_equal(r[:, 0], [2, 3.5, 3.5, 1])


def test_lds_hand_computed_spearman_with_ties():
    # pred = subsets @ scores = [1, 2, 3, 4]; targets [1, 3, 3, 2] rank [1, 3.5, 3.5, 2];
    # Pearson of the ranks: sum(dx dy) = 1.5, sum dx^2 = 5, sum dy^2 = 4.5 -> 1.5 / sqrt(22.5) = 1 / sqrt(10)
    scores = np.array([[1.0], [2.0], [4.0]])
    subsets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    targets = np.array([[1.0], [3.0], [3.0], [2.0]])
    per, mean = lds(scores, subsets, targets)
    assert per[0] == pytest.approx(1 / np.sqrt(10), abs=1e-15) and mean == per[0]


def test_metrics_need_no_scipy(monkeypatch, rng):
    import sys

    for mod in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "scipy", None)  # any `import scipy...` now raises ImportError
    scores, subsets, targets = _case(rng)
    assert np.isfinite(lds(scores, subsets, targets)[1])
    assert np.isfinite(auroc(scores, rng.random(scores.shape) < 0.5)[1])


def test_lds_matches_scipy_spearman(rng):
    spearmanr = pytest.importorskip("scipy.stats").spearmanr

    scores, subsets, targets = _case(rng)
    per, mean = lds(scores, subsets, targets)
    pred = subsets.astype(float) @ scores
    want = np.array([spearmanr(pred[:, j], targets[:, j]).correlation for j in range(scores.shape[1])])
    np.testing.assert_allclose(per, want, rtol=0, atol=1e-12)
    assert mean == pytest.approx(want.mean(), abs=1e-12)
    assert mean > 0.3  # the construction makes the prediction informative


def test_lds_matches_dattri(rng):
    dattri_lds = pytest.importorskip("dattri.metric").lds
    scores, subsets, targets = _case(rng, n_train=50, n_test=9, S=25)
    idx = torch.stack([torch.from_numpy(np.flatnonzero(m)) for m in subsets])
    want = dattri_lds(torch.from_numpy(scores), (torch.from_numpy(targets), idx))[0].numpy()
    per, mean = lds(torch.from_numpy(scores), torch.from_numpy(subsets), torch.from_numpy(targets))
    np.testing.assert_allclose(per, want, rtol=0, atol=1e-10)
    # dattri's integer-index layout is accepted as well
    per2, _ = lds(scores, idx.numpy(), targets)
    np.testing.assert_allclose(per2, per, rtol=0, atol=0)


def test_lds_sign_and_nan(rng):
    scores, subsets, targets = _case(rng)
    _, m_pos = lds(scores, subsets, targets)
    _, m_neg = lds(-scores, subsets, targets)
    assert m_neg == pytest.approx(-m_pos, abs=1e-12)
    t = targets.copy()
    t[:, 2] = 1.5  # constant target column -> NaN for that test example, ignored by the mean
    per, mean = lds(scores, subsets, t)
    assert np.isnan(per[2]) and np.isfinite(np.delete(per, 2)).all()
    assert mean == pytest.approx(np.nanmean(per), abs=1e-15)


def test_lds_bad_input(rng):
    scores, subsets, targets = _case(rng)
    with pytest.raises(ValueError):
        lds(scores, subsets[:, :-1], targets)
    with pytest.raises(ValueError):
        lds(scores, subsets, targets[:-1])
    bad = scores.copy()
    bad[0, 1] = np.nan  # a non-finite score only voids its own test column (NaN, as dattri)
    per_bad, _ = lds(bad, subsets, targets)
    per, _ = lds(scores, subsets, targets)
    assert np.isnan(per_bad[1]) and np.array_equal(np.delete(per_bad, 1), np.delete(per, 1))


def test_column_ranks_match_scipy_rankdata(rng):
    rankdata = pytest.importorskip("scipy.stats").rankdata
    from daunce_fast.evaluation.metrics import _column_ranks

    for n in (1, 2, 7, 40):
        x = rng.integers(0, 4, size=(n, 5)).astype(float)  # many ties
        np.testing.assert_array_equal(_column_ranks(x), rankdata(x, method="average", axis=0))


def test_auroc_matches_sklearn(rng):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

    s = rng.standard_normal((60, 5))
    s[:10, 1] = 0.25  # ties
    lab = rng.random((60, 5)) < 0.3
    per, mean = auroc(s, lab)
    want = [roc_auc_score(lab[:, j], s[:, j]) for j in range(5)]
    np.testing.assert_allclose(per, want, atol=1e-12)
    # shared labels, 1-D scores, degenerate column
    p1, _ = auroc(s[:, 0], lab[:, 0])
    assert p1[0] == pytest.approx(want[0], abs=1e-12)
    pn, _ = auroc(s, np.zeros(60, bool))
    assert np.isnan(pn).all()


def test_recall_at_k(rng):
    s = rng.standard_normal((30, 4))
    rel = np.zeros(30, bool)
    rel[[3, 7, 11]] = True
    s[[3, 7], 0] = 10.0  # two of the three poisoned examples on top for column 0
    per, mean = recall_at_k(s, rel, k=3)
    top3 = np.argsort(-s, axis=0, kind="stable")[:3]
    want = np.array([rel[top3[:, j]].sum() / 3 for j in range(4)])
    np.testing.assert_allclose(per, want)
    assert per[0] >= 2 / 3
    assert mean == pytest.approx(want.mean())
    # k larger than the number of relevant examples: denominator is |relevant|
    s2 = np.zeros(30)
    s2[[3, 7, 11]] = 1.0
    assert recall_at_k(s2, rel, k=10)[0][0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        recall_at_k(s, rel, k=0)
