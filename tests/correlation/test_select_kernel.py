"""The compiled streaming selection (C.corr_select_tile / corr_select_finish) on raw score tiles:
exact top-k under the order (score descending, index ascending), whatever the tiling and the
vector path (scalar, AVX2, AVX-512)."""

import numpy as np
import pytest

from daunce_fast._ext import C, extension_available
from daunce_fast.testing import poison

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")


def exact_topk(S, k):
    """S [N, M] float32 -> (values, indices) [M, k] under (value desc, index asc); NaN never selected."""
    N, M = S.shape
    vals = np.full((M, k), np.nan, np.float32)
    idx = np.full((M, k), -1, np.int64)
    for j in range(M):
        col = S[:, j]
        ok = np.nonzero(~np.isnan(col))[0]
        order = ok[np.lexsort((ok, -col[ok].astype(np.float64)))][:k]
        vals[j, : len(order)] = col[order]
        idx[j, : len(order)] = order
    return vals, idx


def run(S, k, tiles, isa=-1, B=None):
    N, M = S.shape
    B = B or max(2 * k, k + 16)
    thr = np.full(M, -np.inf, np.float32)
    cnt = np.zeros(M, np.int32)
    keys = np.zeros((M, B), np.uint64)
    j0 = 0
    for t in tiles:
        C.corr_select_tile(S[j0 : j0 + t], j0, 0, thr, cnt, keys, k, isa=isa)
        j0 += t
    assert j0 == N
    v, i = poison(np.empty((M, k), np.float32)), np.empty((M, k), np.int64)
    C.corr_select_finish(thr, cnt, keys, k, v, i)
    return v, i


@pytest.mark.parametrize("isa", [0, 1, 2])
@pytest.mark.parametrize(
    "N,M,k,tiles",
    [
        (1000, 37, 10, [64] * 15 + [40]),
        (1000, 37, 10, [1000]),
        (500, 130, 1, [7] * 71 + [3]),
        (300, 20, 300, [100, 100, 100]),
        (2000, 200, 50, [300] * 6 + [200]),
    ],
)
def test_exact_for_any_tiling_and_isa(isa, N, M, k, tiles):
    rng = np.random.default_rng(N + M + k)
    S = rng.standard_normal((N, M)).astype(np.float32)
    S[rng.random((N, M)) < 0.05] = np.nan
    S[:, 3] = np.round(S[:, 3], 1)  # many exact ties
    v, i = run(S, k, tiles, isa=isa)
    rv, ri = exact_topk(S, k)
    assert np.array_equal(i, ri)
    np.testing.assert_array_equal(v, rv)


def test_all_nan_column_and_negative_scores():
    S = -np.abs(np.random.default_rng(0).standard_normal((50, 3))).astype(np.float32) - 5
    S[:, 1] = np.nan
    S[10:, 2] = np.nan
    v, i = run(S, 20, [16, 16, 18])
    rv, ri = exact_topk(S, 20)
    assert np.array_equal(i, ri) and (i[1] == -1).all() and (i[2, 10:] == -1).all()


def test_rejects_bad_state():
    S = np.zeros((4, 3), np.float32)
    thr, cnt, keys = np.zeros(3, np.float32), np.zeros(3, np.int32), np.zeros((3, 4), np.uint64)
    with pytest.raises(ValueError, match="k < B"):
        C.corr_select_tile(S, 0, 0, thr, cnt, keys, 4)
    with pytest.raises(ValueError, match="out of range"):
        C.corr_select_tile(S, 0, 1, thr, cnt, keys, 2)
    with pytest.raises(ValueError, match="contiguous"):
        C.corr_select_tile(np.zeros((3, 4), np.float32).T, 0, 0, thr, cnt, keys, 2)
    with pytest.raises(TypeError):
        C.corr_select_tile(S.astype(np.float64), 0, 0, thr, cnt, keys, 2)
