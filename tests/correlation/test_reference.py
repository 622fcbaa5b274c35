"""The float64 oracle against numpy's own corrcoef / cov (independent implementations)."""

import numpy as np
import pytest
import torch

from daunce_fast.correlation.reference import correlate_reference, topk_reference
from daunce_fast.testing import assert_close_to_reference


@pytest.mark.parametrize("K,N,M", [(2, 3, 4), (9, 31, 17), (64, 50, 3)])
def test_reference_matches_numpy(rng, K, N, M):
    a = rng.standard_normal((K, N)) * rng.uniform(0.1, 10, N) + rng.uniform(-5, 5, N)
    b = rng.standard_normal((K, M)) + 3
    full = np.corrcoef(a.T, b.T)[:N, N:]
    assert_close_to_reference(correlate_reference(a, b).numpy(), full, "float64", rtol=1e-9, atol=1e-12)
    cov = np.cov(a.T, b.T)[:N, N:]
    assert_close_to_reference(correlate_reference(a, b, "covariance").numpy(), cov, "float64", rtol=1e-9, atol=1e-12)


def test_reference_constant_column_and_topk_order():
    a = np.array([[1.0, 2.0, 5.0, 1.0], [2.0, 4.0, 5.0, 2.0], [3.0, 7.0, 5.0, 3.0]])  # col 2 constant, 0 == 3
    b = np.array([[1.0], [2.0], [3.0]])
    s = correlate_reference(a, b).numpy()
    assert np.isnan(s[2, 0]) and s[0, 0] == pytest.approx(1.0)
    assert correlate_reference(a, b, "covariance").numpy()[2, 0] == 0.0
    v, i = topk_reference(a, b, 4)
    assert i[0].tolist() == [0, 3, 1, -1]  # tie 0/3 -> lower index first; constant never selected
    assert torch.isnan(v[0, 3])
