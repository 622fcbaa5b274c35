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


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_models=1),
        dict(ratio=0),
        dict(ratio=1.5),
        dict(objective="x"),
        dict(rank=0),
        dict(steps=0),
        dict(epochs=None),
        dict(batch_size=0),
        dict(antithetic=True, num_models=5),
        dict(optimizer="lbfgs"),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="Daunce"):
        DaunceConfig(**bad).validate()


def test_hashed_normal_is_standard_normal_and_counter_based():
    import torch

    ids, idx = torch.arange(40), torch.arange(3000).expand(40, 3000)
    z = perturb.hashed_normal(5, ids, idx, 7)
    assert z.shape == (40, 3000, 7) and z.dtype == torch.float32 and torch.isfinite(z).all()
    flat = z.double().flatten()
    assert abs(flat.mean()) < 0.01 and abs(flat.var() - 1) < 0.01
    assert abs((flat**4).mean() - 3) < 0.05  # Gaussian kurtosis
    cor = torch.corrcoef(z.reshape(-1, 7).T.double()).fill_diagonal_(0)
    assert cor.abs().max() < 0.01  # classes independent
    # the draw of (model, example) does not depend on which other models/examples are in the batch
    sub = perturb.hashed_normal(5, ids[[7, 3]], torch.tensor([[10, 2999], [0, 5]]), 7)
    assert torch.equal(sub[0, 0], z[7, 10]) and torch.equal(sub[0, 1], z[7, 2999]) and torch.equal(sub[1, 1], z[3, 5])
    other = perturb.hashed_normal(6, ids, idx, 7)
    assert abs(torch.corrcoef(torch.stack([z.flatten(), other.flatten()]))[0, 1]) < 0.01  # seed matters


def test_hessian_direction_has_the_cross_entropy_hessian_as_covariance():
    import torch

    from daunce_fast.daunce.heads import hessian_direction

    z0 = torch.tensor([[2.0, -1.0, 0.5, 0.0], [8.0, 0.0, -3.0, 1.0]])
    K = 200000
    normals = perturb.hashed_normal(0, torch.arange(K), torch.zeros(K, 1, dtype=torch.int64), 4)
    for r in range(2):
        sq0 = torch.softmax(z0[r], 0).sqrt().expand(K, 4)
        d = hessian_direction(sq0, normals, torch.full((K,), 0.5))
        p = torch.softmax(z0[r].double(), 0)
        want = 0.25 * (torch.diag(p) - torch.outer(p, p))
        cov = torch.cov(d.double().T)
        assert torch.allclose(cov, want, atol=3e-3 * want.abs().max()), (cov, want)
        assert d.sum(1).abs().max() < 1e-5  # directions sum to 0: the Hessian's null space (all-ones) untouched


def test_noise_ids_of_antithetic_pairs():
    assert perturb.noise_id_and_sign(6, True) == (6, 1.0) and perturb.noise_id_and_sign(7, True) == (6, -1.0)
    assert perturb.noise_id_and_sign(7, False) == (7, 1.0)
    np.testing.assert_array_equal(perturb.weights_c("if", 0.3, np.array([0.1, 0.9]), "hessian"), [1.0, 1.0])


def test_config_perturbation_and_rho_defaults():
    c = DaunceConfig()
    assert (c.perturbation, c.rho) == ("hessian", 0.03)
    assert (DaunceConfig(objective="efim").perturbation, DaunceConfig(objective="efim").rho) == ("xi", 0.3)
    assert DaunceConfig(perturbation="xi").rho == 0.3 and DaunceConfig(rho=0.5).rho == 0.5


@pytest.mark.parametrize(
    "bad", [dict(perturbation="labels"), dict(perturbation="hessian", objective="efim"), dict(rho=0.0), dict(rho=-1.0)]
)
def test_config_rejects_bad_perturbation(bad):
    with pytest.raises(ValueError, match="Daunce: (perturbation|rho)"):
        DaunceConfig(**bad).validate()
