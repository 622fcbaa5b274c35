"""topk(): every live CPU backend against the float64 reference (index sets equal except swaps
among near-ties), ties, constants, non-finite policy, errors, I/O types."""

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast.correlation import ConstantColumnWarning, TopKResult
from daunce_fast.correlation.reference import correlate_reference, topk_reference

from ._helpers import assert_topk_matches, live_cpu_backends

BACKENDS = live_cpu_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "K,N,M,k,tile",
    [
        (3, 257, 13, 5, 64),  # several tiles, odd sizes
        (16, 1000, 131, 10, 128),  # M over several column blocks, most tiles take the threshold scan
        (7, 40, 9, 1, None),  # one tile, k = 1
        (5, 70, 20, 70, 32),  # k = N
        (128, 600, 33, 100, 256),  # K = 128, k = 100
        (2, 9, 1, 3, 4),  # K = 2: every score is +-1 (massive ties)
    ],
)
@pytest.mark.parametrize("method,largest", [("pearson", True), ("pearson", False), ("covariance", True)])
def test_matches_reference(rng, backend, K, N, M, k, tile, method, largest):
    a = (rng.standard_normal((K, N)) * 2 + 1).astype(np.float32)
    b = rng.standard_normal((K, M)).astype(np.float32)
    res = daunce_fast.topk(a, b, k, method=method, largest=largest, backend=backend, tile=tile)
    assert isinstance(res, TopKResult)
    v, i = res
    assert v.dtype == np.float32 and i.dtype == np.int64 and v.shape == (M, k) and i.shape == (M, k)
    ref = correlate_reference(a, b, method).numpy()
    tol = 3e-6 * np.sqrt(K) * (1 if method == "pearson" else np.abs(ref).max())
    assert_topk_matches(v, i, ref, k, largest=largest, tol=tol, name=f"{backend}/{method}/{largest}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lower_index(backend):
    # duplicated train columns give exactly equal scores: best first, ties by ascending index
    rng = np.random.default_rng(7)
    base = rng.standard_normal((6, 5)).astype(np.float32)
    a = np.concatenate([base] * 8, axis=1)  # column c and c + 5m are identical
    b = rng.standard_normal((6, 4)).astype(np.float32)
    v, i = daunce_fast.topk(a, b, 12, backend=backend, tile=8)
    rv, ri = topk_reference(a, b, 12)
    # the top 8 of each test column are the 8 copies of its best base column, in index order
    best = ri.numpy()[:, 0] % 5
    for j in range(4):
        assert i[j, :8].tolist() == [int(best[j]) + 5 * m for m in range(8)]
    assert np.array_equal(i, ri.numpy()) or backend == "torch"
    np.testing.assert_allclose(v, rv.numpy(), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_variance_large_mean(rng, backend):
    K, N, M, k = 64, 400, 12, 20
    a = (1000.0 + 0.1 * rng.standard_normal((K, N))).astype(np.float32)  # sigma/mean = 1e-4
    b = (7.0 + 7e-4 * rng.standard_normal((K, M))).astype(np.float32)
    v, i = daunce_fast.topk(a, b, k, backend=backend, tile=64)
    assert_topk_matches(v, i, correlate_reference(a, b).numpy(), k, tol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_columns_never_selected_and_reported(rng, backend):
    a = rng.standard_normal((5, 30)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    a[:, [2, 17, 29]] = 4.0
    b[:, 1] = 0.5
    with pytest.warns(ConstantColumnWarning):
        res = daunce_fast.topk(a, b, 28, backend=backend, tile=8)
    v, i = res
    assert res.constant_train.tolist() == [2, 17, 29] and res.constant_test.tolist() == [1]
    assert not np.isin(i, [2, 17, 29]).any()
    # 27 selectable train columns for k = 28: the last slot is NaN / -1; the constant test column gets none
    assert (i[[0, 2], 27] == -1).all() and np.isnan(v[[0, 2], 27]).all()
    assert (i[1] == -1).all() and np.isnan(v[1]).all()
    assert_topk_matches(v, i, correlate_reference(a, b).numpy(), 28, tol=1e-5)
    # covariance: constants are well defined (0) and selectable
    res = daunce_fast.topk(a, b, 30, method="covariance", backend=backend)
    assert (res.indices >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite(rng, backend):
    a = rng.standard_normal((4, 60)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    a[2, 41] = np.nan
    with pytest.raises(ValueError, match="model 2, example 41"):
        daunce_fast.topk(a, b, 3, backend=backend, tile=16)
    v, i = daunce_fast.topk(a, b, 3, backend=backend, nan_policy="propagate", tile=16)
    assert not (i == 41).any()
    with np.errstate(invalid="ignore"):
        assert_topk_matches(v, i, correlate_reference(a, b).numpy(), 3, tol=1e-5)


def test_errors_and_empty(rng):
    a, b = rng.standard_normal((3, 10)), rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"k must be in \[0, N\]"):
        daunce_fast.topk(a, b, 11)
    with pytest.raises(ValueError, match=r"k must be in"):
        daunce_fast.topk(a, b, -1)
    with pytest.raises(TypeError, match="k must be an int"):
        daunce_fast.topk(a, b, 2.0)
    with pytest.raises(ValueError, match="k must be in"):
        daunce_fast.topk(np.zeros((3, 0)), b, 1)
    v, i = daunce_fast.topk(np.zeros((3, 0)), b, 0)
    assert v.shape == (4, 0) and i.shape == (4, 0)
    v, i = daunce_fast.topk(a, np.zeros((3, 0)), 2)
    assert v.shape == (0, 2) and i.shape == (0, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out(rng, backend):
    a = torch.randn(6, 80, dtype=torch.float64)
    b = torch.randn(6, 9)
    v, i = daunce_fast.topk(a, b, 7, backend=backend, tile=32)
    assert isinstance(v, torch.Tensor) and isinstance(i, torch.Tensor) and i.dtype == torch.int64
    assert_topk_matches(v, i, correlate_reference(a, b).numpy(), 7, tol=1e-5)


def test_progress_bar(rng, capsys):
    a, b = rng.standard_normal((3, 100)), rng.standard_normal((3, 4))
    daunce_fast.topk(a, b, 2, progress=True, tile=32)
    assert "topk" in capsys.readouterr().err


def test_cpu_fused_and_unfused_paths_agree(rng, monkeypatch):
    """The cpu backend multiplies and selects per thread in one region when torch's BLAS exports
    sgemm_ (fused), else per tile with torch.matmul + a separate selection: same exact result."""
    from daunce_fast._backends import available_backends
    from daunce_fast.correlation import cpu_launch

    if "cpu" not in available_backends():
        pytest.skip("extension not built")
    a = rng.standard_normal((9, 2000)).astype(np.float32)
    b = rng.standard_normal((9, 77)).astype(np.float32)
    v1, i1 = daunce_fast.topk(a, b, 13, backend="cpu", tile=300)
    monkeypatch.setattr(cpu_launch, "blas_sgemm", lambda: 0)
    v2, i2 = daunce_fast.topk(a, b, 13, backend="cpu", tile=300)
    assert_topk_matches(v2, i2, correlate_reference(a, b).numpy(), 13, tol=1e-5)
    assert_topk_matches(v1, i1, correlate_reference(a, b).numpy(), 13, tol=1e-5)
    near = np.abs(v1 - v2) <= 1e-6
    assert near.all() and (i1 == i2).mean() > 0.99  # identical except swaps of float-rounding ties


@pytest.mark.parametrize("largest", [True, False])
def test_merge_topk_of_train_shards_equals_whole(rng, largest):
    """topk per train shard (indices offset to global) then merge_topk == topk of the whole."""
    from daunce_fast.correlation import merge_topk

    a = rng.standard_normal((6, 300)).astype(np.float32)
    a[:, 150:160] = a[:, 0:10]  # exact ties across shards
    b = rng.standard_normal((6, 8)).astype(np.float32)
    whole_v, whole_i = daunce_fast.topk(a, b, 12, largest=largest, backend="torch")
    parts = []
    for s0, s1 in ((0, 100), (100, 170), (170, 300)):
        v, i = daunce_fast.topk(a[:, s0:s1], b, 12, largest=largest, backend="torch")
        parts.append((v, i + s0))
    mv, mi = merge_topk(parts, 12, largest=largest)
    np.testing.assert_array_equal(mi, whole_i)
    np.testing.assert_allclose(mv, whole_v, atol=1e-6)
    tv, ti = merge_topk([(torch.from_numpy(v), torch.from_numpy(i)) for v, i in parts], 5, largest=largest)
    assert isinstance(tv, torch.Tensor) and torch.equal(ti, torch.from_numpy(whole_i[:, :5]))
    with pytest.raises(ValueError, match="exceeds"):
        merge_topk(parts, 37)


def test_torch_library_ops(rng):
    from daunce_fast.correlation import ops  # noqa: F401  (registers the ops)

    a = torch.from_numpy(rng.standard_normal((5, 40)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((5, 6)).astype(np.float32))
    v, i = torch.ops.daunce_fast.corr_topk(a, b, 4, "pearson", True)
    rv, ri = daunce_fast.topk(a, b, 4)
    assert torch.equal(i, ri) and torch.equal(v, rv)
    s = torch.ops.daunce_fast.correlate(a, b, "covariance")
    assert s.shape == (40, 6)
    torch.library.opcheck(
        torch.ops.daunce_fast.corr_topk.default,
        (a, b, 4, "pearson", False),
        test_utils=("test_schema", "test_faketensor"),
    )
