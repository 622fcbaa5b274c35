"""triton backend (under TRITON_INTERPRET=1 without a GPU: tiny grids, fp32) vs the float64 oracle."""

import importlib.util
import os

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast.correlation.reference import correlate_reference
from daunce_fast.testing import assert_close_to_reference, poison

from ._helpers import assert_topk_matches

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
    pytest.mark.skipif(
        not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
        reason="no GPU and not under the Triton interpreter",
    ),
]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5 if DEV == "cpu" else 2e-3  # the interpreter's fp32 dot is exact; GPU default is tf32


def data(rng, K, N, M):
    a = torch.from_numpy((rng.standard_normal((K, N)) * 2 + 1).astype(np.float32)).to(DEV)
    b = torch.from_numpy(rng.standard_normal((K, M)).astype(np.float32)).to(DEV)
    return a, b


@pytest.mark.parametrize("method", ["pearson", "covariance"])
@pytest.mark.parametrize("K,N,M,tile", [(20, 70, 19, 32), (3, 17, 5, None)])
def test_correlate(rng, method, K, N, M, tile):
    a, b = data(rng, K, N, M)
    s = daunce_fast.correlate(a, b, method=method, backend="triton", tile=tile)
    assert s.device.type == DEV and s.shape == (N, M)
    ref = correlate_reference(a.cpu(), b.cpu(), method).numpy()
    scale = 1.0 if method == "pearson" else float(np.abs(ref).max())
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=TOL * scale, name=f"triton/{method}")


def test_correlate_half_output_constants_and_nan(rng):
    a, b = data(rng, 6, 40, 9)
    a[:, 5] = 2.0
    a[3, 30] = float("nan")
    out = poison(torch.empty(40, 9, dtype=torch.float16, device=DEV))
    with pytest.warns(daunce_fast.correlation.ConstantColumnWarning):
        daunce_fast.correlate(a, b, backend="triton", out=out, nan_policy="propagate", tile=16)
    with np.errstate(invalid="ignore"):
        ref = correlate_reference(a.cpu(), b.cpu()).numpy()
    assert torch.isnan(out[5]).all() and torch.isnan(out[30]).all()
    assert_close_to_reference(out, ref, "float16", rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    "K,N,M,k,largest", [(20, 70, 19, 5, True), (20, 70, 19, 5, False), (5, 40, 3, 1, True), (5, 40, 3, 40, True)]
)
def test_topk(rng, K, N, M, k, largest):
    a, b = data(rng, K, N, M)
    v, i = daunce_fast.topk(a, b, k, largest=largest, backend="triton", tile=16)
    assert v.device.type == DEV and i.dtype == torch.int64
    assert_topk_matches(v, i, correlate_reference(a.cpu(), b.cpu()).numpy(), k, largest=largest, tol=TOL)


@pytest.mark.parametrize("slack", [256, 0])
def test_fused_filter_and_overflow_fallback(rng, slack):
    """slack=256: every tile after the first goes through the fused filter; slack=0 (2k slots)
    forces buffer overflows, which must fall back to the unfused merge without losing anything."""
    from daunce_fast.correlation.triton_launch import TritonEngine

    K, N, M, k = 8, 96, 20, 4
    a, b = data(rng, K, N, M)
    eng = TritonEngine(K, M, method="pearson", device=DEV, precision="fp32", tile=16)
    eng.set_test(b, 1.0)
    eng.start_topk(k, slack=slack)
    for j0 in range(0, N, 16):
        eng.select_tile(eng.standardise(a[:, j0 : j0 + 16], 1.0).z, j0)
    v, i = eng.finish_topk()
    if slack:
        assert eng.unfused_tiles == 1
    else:
        assert 1 < eng.unfused_tiles <= N // 16
    assert_topk_matches(v, i, correlate_reference(a.cpu(), b.cpu()).numpy(), k, tol=TOL)


def test_constant_columns_never_selected(rng):
    a, b = data(rng, 5, 30, 4)
    a[:, [0, 9]] = 1.0
    with pytest.warns(daunce_fast.correlation.ConstantColumnWarning):
        res = daunce_fast.topk(a, b, 29, backend="triton", tile=16)
    assert res.constant_train.tolist() == [0, 9]
    assert not torch.isin(res.indices, torch.tensor([0, 9], device=DEV)).any()
    assert (res.indices[:, 28] == -1).all()
    assert_topk_matches(res.values, res.indices, correlate_reference(a.cpu(), b.cpu()).numpy(), 29, tol=TOL)


@pytest.mark.skipif(DEV == "cuda", reason="interpreter-only check")
def test_bf16_refused_under_interpreter(rng):
    a, b = data(rng, 4, 10, 2)
    with pytest.raises(ValueError, match="bf16"):
        daunce_fast.topk(a, b, 2, backend="triton", precision="bf16")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("tf32", 2e-3), ("bf16", 2e-2)])
def test_gpu_precisions(rng, precision, tol):
    a, b = data(rng, 100, 5000, 300)
    ref = correlate_reference(a.cpu(), b.cpu()).numpy()
    s = daunce_fast.correlate(a, b, backend="triton", precision=precision)
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=tol, name=f"triton/{precision}")
    v, i = daunce_fast.topk(a, b, 50, backend="triton", precision=precision, tile=1024)
    assert_topk_matches(v, i, ref, 50, tol=tol)
