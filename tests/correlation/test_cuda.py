"""cuda backend (csrc/cuda/corr_tile.cu): runs only on a CUDA device; here it must at least be built."""

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast._ext import build_info
from daunce_fast.correlation.reference import correlate_reference
from daunce_fast.testing import assert_close_to_reference

from ._helpers import assert_topk_matches


def test_cuda_kernels_are_bound_when_built_with_cuda():
    info = build_info()
    if info is None or not info.get("cuda"):
        pytest.skip("extension built without CUDA")
    from daunce_fast._ext import C

    assert callable(C.corr_tile_cuda) and callable(C.corr_filter_cuda)


def test_cuda_backend_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(daunce_fast.BackendUnavailableError):
        daunce_fast.topk(np.random.rand(3, 10), np.random.rand(3, 2), 2, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 2e-6), ("tf32", 2e-3), ("bf16", 2e-2)])
@pytest.mark.parametrize("K,N,M", [(100, 3001, 257), (7, 65, 63), (2, 1, 1)])
def test_correlate_and_topk(rng, precision, tol, K, N, M):
    a = torch.from_numpy((rng.standard_normal((K, N)) + 1).astype(np.float32)).cuda()
    b = torch.from_numpy(rng.standard_normal((K, M)).astype(np.float32)).cuda()
    ref = correlate_reference(a.cpu(), b.cpu()).numpy()
    s = daunce_fast.correlate(a, b, backend="cuda", precision=precision, tile=1000)
    assert s.is_cuda and s.dtype == torch.float32
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=tol, name=f"cuda/{precision}")
    cov = daunce_fast.correlate(a, b, method="covariance", backend="cuda", precision=precision)
    cref = correlate_reference(a.cpu(), b.cpu(), "covariance").numpy()
    assert_close_to_reference(cov, cref, "float32", rtol=0, atol=tol * float(np.abs(cref).max()) * 4)
    k = min(N, 50)
    for largest in (True, False):
        v, i = daunce_fast.topk(a, b, k, largest=largest, backend="cuda", precision=precision, tile=512)
        assert v.is_cuda and i.is_cuda
        assert_topk_matches(v, i, ref, k, largest=largest, tol=tol)


@pytest.mark.gpu
def test_constants_nan_and_fused_path(rng):
    from daunce_fast.correlation.cuda_launch import CudaEngine

    a = torch.randn(16, 4000, device="cuda")
    b = torch.randn(16, 70, device="cuda")
    a[:, 11] = 3.0
    with pytest.warns(daunce_fast.correlation.ConstantColumnWarning):
        res = daunce_fast.topk(a, b, 20, backend="cuda", precision="fp32", tile=256)
    assert not (res.indices == 11).any()
    assert_topk_matches(res.values, res.indices, correlate_reference(a.cpu(), b.cpu()).numpy(), 20, tol=2e-6)
    eng = CudaEngine(16, 70, method="pearson", device="cuda", precision="fp32", tile=256)
    eng.set_test(b, 1.0)
    eng.start_topk(20)
    for j0 in range(0, 4000, 256):
        eng.select_tile(eng.standardise(a[:, j0 : j0 + 256], 1.0).z, j0)
    assert eng.unfused_tiles <= 2  # the first tile, and at most one overflow
