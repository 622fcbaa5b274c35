"""correlate(): every live CPU backend against the float64 reference, edge cases, I/O types."""

import warnings

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast.correlation import ConstantColumnWarning
from daunce_fast.correlation.reference import correlate_reference
from daunce_fast.testing import assert_close_to_reference, poison

from ._helpers import live_cpu_backends

BACKENDS = live_cpu_backends()
# (K, N, M, tile): N and M not multiples of any tile; one tile; tails of one column
SHAPES = [(2, 1, 1, None), (3, 257, 13, 64), (17, 1000, 31, 256), (128, 300, 65, None), (5, 129, 1, 64)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,N,M,tile", SHAPES)
@pytest.mark.parametrize("method", ["pearson", "covariance"])
def test_matches_reference(rng, backend, K, N, M, tile, method):
    a = (rng.standard_normal((K, N)) * rng.uniform(0.5, 3, N) + rng.uniform(-2, 2, N)).astype(np.float32)
    b = (rng.standard_normal((K, M)) + 1).astype(np.float32)
    s = daunce_fast.correlate(a, b, method=method, backend=backend, tile=tile)
    assert isinstance(s, np.ndarray) and s.shape == (N, M) and s.dtype == np.float32
    ref = correlate_reference(a, b, method).numpy()
    scale = 1.0 if method == "pearson" else float(np.abs(ref).max()) + 1e-30
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=2e-6 * scale * np.sqrt(K), name=f"{backend}/{method}")
    if method == "pearson":
        assert np.nanmax(np.abs(s)) <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_variance_large_mean(rng, backend):
    """sigma/mean = 1e-4: centring must happen in float64 before the cast."""
    K, N, M = 64, 300, 20
    a = (1000.0 + 0.1 * rng.standard_normal((K, N))).astype(np.float32)
    b = (-500.0 + 0.05 * rng.standard_normal((K, M))).astype(np.float32)
    s = daunce_fast.correlate(a, b, backend=backend, tile=128)
    ref = correlate_reference(a, b).numpy()
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=2e-5, name=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_output_is_float64_accurate(rng, backend):
    a, b = rng.standard_normal((9, 70)), rng.standard_normal((9, 11))
    s = daunce_fast.correlate(a, b, backend=backend, out_dtype="float64", tile=32)
    assert s.dtype == np.float64
    assert_close_to_reference(s, correlate_reference(a, b).numpy(), "float64", rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_columns_are_nan_and_reported(rng, backend):
    a = rng.standard_normal((6, 40)).astype(np.float32)
    b = rng.standard_normal((6, 5)).astype(np.float32)
    a[:, 7] = 3.25
    a[:, 33] = 0.0
    b[:, 2] = -1.5
    with pytest.warns(ConstantColumnWarning, match=r"2 train column\(s\) \[7, 33\].*1 test column\(s\) \[2\]"):
        s = daunce_fast.correlate(a, b, backend=backend, tile=16)
    ref = correlate_reference(a, b).numpy()
    assert np.isnan(s[7]).all() and np.isnan(s[33]).all() and np.isnan(s[:, 2]).all()
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)
    cov = daunce_fast.correlate(a, b, method="covariance", backend=backend)
    assert np.all(cov[7] == 0) and np.all(cov[:, 2] == 0)  # well defined: zero, no warning needed


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_raises_naming_first_model_and_example(rng, backend):
    a = rng.standard_normal((4, 50)).astype(np.float32)
    b = rng.standard_normal((4, 6)).astype(np.float32)
    a[3, 20], a[1, 20], a[0, 45] = np.inf, np.nan, np.nan
    with pytest.raises(ValueError, match=r"train has a non-finite value nan at model 1, example 20"):
        daunce_fast.correlate(a, b, backend=backend, tile=16)
    b2 = b.copy()
    b2[2, 4] = -np.inf
    with pytest.raises(ValueError, match=r"test .* at model 2, example 4"):
        daunce_fast.correlate(b, b2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_policy_propagate_like_numpy(rng, backend):
    a = rng.standard_normal((5, 30))
    b = rng.standard_normal((5, 4))
    a[2, 11] = np.nan
    s = daunce_fast.correlate(a, b, backend=backend, nan_policy="propagate")
    with np.errstate(invalid="ignore"):
        ref = np.corrcoef(a.T, b.T)[:30, 30:]
    assert np.isnan(s[11]).all() and np.isnan(ref[11]).all()
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)


def test_errors(rng):
    a, b = rng.standard_normal((4, 10)), rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="same number of models"):
        daunce_fast.correlate(a, rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="at least K=2"):
        daunce_fast.correlate(a[:1], b[:1])
    with pytest.raises(ValueError, match="2-D"):
        daunce_fast.correlate(a[0], b)
    with pytest.raises(ValueError, match="method"):
        daunce_fast.correlate(a, b, method="spearman")
    with pytest.raises(ValueError, match="nan_policy"):
        daunce_fast.correlate(a, b, nan_policy="omit")
    with pytest.raises(ValueError, match="precision"):
        daunce_fast.correlate(a, b, precision="fp8")
    with pytest.raises(ValueError, match="out_dtype"):
        daunce_fast.correlate(a, b, out_dtype="int8")
    with pytest.raises(ValueError, match="shape"):
        daunce_fast.correlate(a, b, out=np.empty((3, 10), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        daunce_fast.correlate(a.astype(str), b)
    with pytest.raises(daunce_fast.BackendUnavailableError):
        daunce_fast.correlate(a, b, backend="cuda")
    if "cpu" in BACKENDS:
        with pytest.raises(ValueError, match="GPU backend"):
            daunce_fast.correlate(a, b, backend="cpu", precision="bf16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(rng, backend):
    assert daunce_fast.correlate(np.zeros((3, 0)), rng.standard_normal((3, 4)), backend=backend).shape == (0, 4)
    assert daunce_fast.correlate(rng.standard_normal((3, 5)), np.zeros((3, 0)), backend=backend).shape == (5, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out_and_out_buffer(rng, backend):
    a = torch.from_numpy(rng.standard_normal((8, 90)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((8, 7)).astype(np.float32))
    ref = correlate_reference(a, b).numpy()
    s = daunce_fast.correlate(a, b, backend=backend, tile=32)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)
    # mixed numpy train / torch test -> torch; half precision inputs are read as float32
    s2 = daunce_fast.correlate(a.numpy(), b.to(torch.float16), backend=backend)
    assert isinstance(s2, torch.Tensor)
    ref16 = correlate_reference(a, b.to(torch.float16).float()).numpy()
    assert_close_to_reference(s2, ref16, "float32", rtol=0, atol=1e-6)
    # preallocated outputs are filled in place and returned
    for out in (
        poison(np.empty((90, 7), np.float32)),
        poison(torch.empty(90, 7, dtype=torch.float64)),
        poison(np.empty((90, 7), np.float16)),
    ):
        res = daunce_fast.correlate(a, b, backend=backend, out=out, tile=32)
        assert res is out
        assert_close_to_reference(
            out,
            ref,
            "float16" if out.dtype == np.float16 else "float32",
            rtol=0,
            atol=1e-3 if out.dtype == np.float16 else 1e-6,
        )
    s16 = daunce_fast.correlate(a, b, backend=backend, out_dtype="bfloat16")
    assert s16.dtype == torch.bfloat16
    assert_close_to_reference(s16, ref, "bfloat16", rtol=0, atol=8e-3)
    with pytest.raises(ValueError, match="bfloat16"):
        daunce_fast.correlate(a.numpy(), b.numpy(), backend=backend, out_dtype="bfloat16")


def test_integer_and_list_inputs(rng):
    a = rng.integers(-5, 5, (6, 20))
    b = rng.integers(-5, 5, (6, 3)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantColumnWarning)
        s = daunce_fast.correlate(a, b)
        ref = correlate_reference(a.astype(float), np.array(b, float)).numpy()
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)


@pytest.mark.skipif(pytest.importorskip("importlib").util.find_spec("cupy") is None, reason="cupy not installed")
@pytest.mark.gpu
def test_cupy_in_cupy_out(rng):
    import cupy

    a, b = rng.standard_normal((8, 100)).astype(np.float32), rng.standard_normal((8, 9)).astype(np.float32)
    s = daunce_fast.correlate(cupy.asarray(a), cupy.asarray(b))
    assert isinstance(s, cupy.ndarray)
    assert_close_to_reference(cupy.asnumpy(s), correlate_reference(a, b).numpy(), "tf32", rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views_as_inputs(rng, backend):
    """[N, K] data passed transposed (a non-contiguous view), and a column-sliced view."""
    x = rng.standard_normal((300, 11)).astype(np.float32)  # [N, K] as users often hold it
    y = rng.standard_normal((11, 40)).astype(np.float32)[:, ::3]
    s = daunce_fast.correlate(x.T, y, backend=backend, tile=64)
    assert_close_to_reference(s, correlate_reference(x.T.copy(), y.copy()).numpy(), "float32", rtol=0, atol=1e-6)
    v, i = daunce_fast.topk(x.T, y, 5, backend=backend, tile=64)
    from ._helpers import assert_topk_matches

    assert_topk_matches(v, i, correlate_reference(x.T.copy(), y.copy()).numpy(), 5, tol=1e-5)
