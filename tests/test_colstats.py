"""The compiled column-statistics kernel vs a float64 numpy reference."""

import numpy as np
import pytest

from daunce_fast._ext import C, extension_available
from daunce_fast.testing import assert_close_to_reference, poison

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")


def ref_stats(x):
    x64 = x.astype(np.float64)
    mu = x64.mean(0)
    return mu, ((x64 - mu) ** 2).sum(0)


@pytest.mark.parametrize("K,N", [(2, 1), (3, 255), (7, 257), (128, 1031), (1, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_colstats_matches_reference(rng, K, N, dtype):
    x = (rng.standard_normal((K, N)) * 3 + 1).astype(dtype)
    mean, m2 = poison(np.empty(N)), poison(np.empty(N))
    assert C.colstats(x, mean, m2) == -1
    mu, q = ref_stats(x)
    assert_close_to_reference(mean, mu, "float64", name="mean")
    assert_close_to_reference(m2, q, "float64", rtol=1e-9, name="m2")


def test_colstats_strided_column_tile_and_tiny_variance(rng):
    base = (1000.0 + 1e-1 * rng.standard_normal((64, 900))).astype(np.float32)  # sigma/mean = 1e-4
    tile = base[:, 101:700:3]  # non-contiguous view, as a column tile of a memory map
    mean, m2 = np.empty(tile.shape[1]), np.empty(tile.shape[1])
    C.colstats(tile, mean, m2)
    mu, q = ref_stats(tile)
    assert_close_to_reference(mean, mu, "float64", name="mean")
    assert_close_to_reference(m2, q, "float64", rtol=1e-9, name="m2")


def test_colstats_reports_first_non_finite(rng):
    x = rng.standard_normal((5, 600)).astype(np.float32)
    x[4, 300] = np.inf
    x[2, 300] = np.nan
    x[1, 450] = np.nan
    mean, m2 = np.empty(600), np.empty(600)
    bad = C.colstats(x, mean, m2)
    assert divmod(bad, 5) == (300, 2)  # example 300, model 2


def test_colstats_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        C.colstats(np.zeros(5, np.float32), np.empty(5), np.empty(5))
    with pytest.raises(TypeError, match="float32 or float64"):
        C.colstats(np.zeros((2, 5), np.int32), np.empty(5), np.empty(5))
    with pytest.raises(ValueError, match="shape"):
        C.colstats(np.zeros((2, 5), np.float32), np.empty(4), np.empty(5))
