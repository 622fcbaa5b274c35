import numpy as np
import pytest

from daunce_fast.daunce import perturb
from daunce_fast.daunce.config import DaunceConfig


def test_subsets_are_per_model_deterministic_and_sized():
    a, xa = perturb.subset_and_xi(7, 3, 1000, 0.3)
    b, xb = perturb.subset_and_xi(7, 3, 1000, 0.3)
    c, _ = perturb.subset_and_xi(7, 4, 1000, 0.3)
    assert np.array_equal(a, b) and np.array_equal(xa, xb)
    assert len(a) == 300 and len(np.unique(a)) == 300 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, c)
    assert np.all((xa >= 0) & (xa < 1))
    full, _ = perturb.subset_and_xi(7, 0, 10, 1.0)
    assert np.array_equal(full, np.arange(10))


def test_antithetic_pairs_share_subset_and_reflect_xi():
    a, xa = perturb.subset_and_xi(1, 10, 500, 0.5, antithetic=True)
    b, xb = perturb.subset_and_xi(1, 11, 500, 0.5, antithetic=True)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(xa + xb, 1.0)


def test_weights_c_means():
    xi = np.random.default_rng(0).random(200000)
    assert abs(perturb.weights_c("if", 1.0, xi).mean() - 1) < 0.01
    assert abs(perturb.weights_c("efim", 0.3, xi).mean()) < 0.01
    np.testing.assert_allclose(perturb.weights_c("if", 1.0, xi), 2 * xi)


@pytest.mark.parametrize("bad", [dict(num_models=1), dict(ratio=0), dict(ratio=1.5), dict(objective="x"),
                                 dict(rank=0), dict(steps=0), dict(epochs=None), dict(batch_size=0),
                                 dict(antithetic=True, num_models=5), dict(optimizer="lbfgs")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="Daunce"):
        DaunceConfig(**bad).validate()
