"""DAUNCE output-space objectives vs a float64 reference written from docs/objectives.md#objectives."""

import pytest
import torch

from daunce_fast.daunce.objectives import (
    base_terms,
    cross_entropy_per_example,
    daunce_loss,
    margin_per_example,
    neg_margin_per_example,
)
from daunce_fast.testing import assert_close_to_reference


def ref_objective(z, z0, y, c, objective, gamma):
    """Plain loop over models and examples, float64."""
    K, b = c.shape
    z, z0 = z.double().view(K, b, -1), z0.double().view(K, b, -1)
    y = y.view(K, b)
    out = []
    for k in range(K):
        terms_r, terms_fo = [], []
        for i in range(b):
            zi, z0i, yi = z[k, i], z0[k, i], int(y[k, i])
            if objective == "margin":
                # loss-like target t = -margin, g = dt/dz = softmax over v != y, minus onehot(y)
                t = torch.logsumexp(torch.cat([zi[:yi], zi[yi + 1 :]]), 0) - zi[yi]
                t0 = torch.logsumexp(torch.cat([z0i[:yi], z0i[yi + 1 :]]), 0) - z0i[yi]
                p = torch.softmax(torch.cat([z0i[:yi], z0i[yi + 1 :]]), 0)
                g = torch.cat([p[:yi], torch.zeros(1, dtype=p.dtype), p[yi:]])
                g[yi] = -1.0
            else:
                t = torch.logsumexp(zi, 0) - zi[yi]
                t0 = torch.logsumexp(z0i, 0) - z0i[yi]
                g = torch.softmax(z0i, 0)
                g[yi] -= 1.0
            terms_r.append((t, t0))
            terms_fo.append(float(c[k, i]) * torch.dot(zi - z0i, g))
        ts = torch.stack([a for a, _ in terms_r])
        t0s = torch.stack([b_ for _, b_ in terms_r])
        if objective == "if":
            reg = ts.mean() - t0s.mean()
        elif objective == "blackbox":
            out.append(gamma * ts.mean())
            continue
        else:
            reg = ((ts - t0s) ** 2).mean()
        out.append(gamma * reg - torch.stack(terms_fo).mean())
    return torch.stack(out)


@pytest.mark.parametrize("objective", ["if", "efim", "margin", "blackbox"])
def test_daunce_loss_matches_reference(objective):
    g = torch.Generator().manual_seed(1)
    K, b, C = 3, 5, 7
    z = torch.randn(K * b, C, generator=g, dtype=torch.float64) * 3
    z0 = z + 0.3 * torch.randn(K * b, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (K * b,), generator=g)
    c = torch.rand(K, b, generator=g, dtype=torch.float64) * 2
    target = neg_margin_per_example if objective == "margin" else cross_entropy_per_example
    t0, g0 = base_terms(z0, y, target)
    zz = z.clone().requires_grad_(True)
    obj, t = daunce_loss(zz, y, c, num_models=K, objective=objective, gamma=0.7, target_fn=target, z0=z0, t0=t0, g0=g0)
    ref = ref_objective(z, z0, y, c, objective, 0.7)
    assert_close_to_reference(obj.detach(), ref, "float64", name=f"objective[{objective}]")
    assert t.shape == (K, b)
    # gradient of one model's objective touches only that model's rows
    obj[1].backward()
    gz = zz.grad.view(K, b, C)
    assert gz[0].abs().max() == 0 and gz[2].abs().max() == 0 and gz[1].abs().max() > 0


def test_first_order_term_vanishes_at_base_and_gradient_is_minus_c_g():
    g = torch.Generator().manual_seed(2)
    K, b, C = 2, 4, 5
    z0 = torch.randn(K * b, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (K * b,), generator=g)
    c = torch.rand(K, b, generator=g, dtype=torch.float64)
    t0, g0 = base_terms(z0, y, cross_entropy_per_example)
    zz = z0.clone().requires_grad_(True)
    obj, _ = daunce_loss(
        zz, y, c, num_models=K, objective="if", gamma=1.0, target_fn=cross_entropy_per_example, z0=z0, t0=t0, g0=g0
    )
    assert_close_to_reference(obj.detach(), torch.zeros(K, dtype=torch.float64), "float64", name="obj at z0")
    obj.sum().backward()
    # d/dz [mean l - mean c <z - z0, g>] at z0 = (1 - c) g / b
    expect = ((1 - c).reshape(-1, 1) * g0) / b
    assert_close_to_reference(zz.grad, expect, "float64", name="grad at z0")


def test_targets_for_sequences_ignore_index():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (2, 4), generator=g)
    y[0, 1] = -100
    y[1, :] = -100
    ce = cross_entropy_per_example(z, y)
    tok = torch.logsumexp(z[0], -1) - z[0].gather(-1, y[0].clamp_min(0)[:, None]).squeeze(-1)
    assert_close_to_reference(ce[0], tok[[0, 2, 3]].mean(), "float64", name="ce seq")
    assert ce[1].item() == 0.0  # no valid token: 0, not NaN
    m = margin_per_example(z, y)
    assert torch.isfinite(m).all()
    big = torch.tensor([[1e4, 0.0, -1e4]], dtype=torch.float64)
    assert torch.isfinite(cross_entropy_per_example(big, torch.tensor([2]))).all()
    assert torch.isfinite(margin_per_example(big, torch.tensor([2]))).all()


def test_cross_entropy_keeps_precision_for_confident_examples():
    z = torch.tensor([[30.0, 0.0, -5.0], [17.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    ce = cross_entropy_per_example(z, y)
    ref = torch.nn.functional.cross_entropy(z.double(), y, reduction="none")
    exact = torch.log1p(torch.exp(torch.logsumexp(z.double()[:2, 1:], 1) - z.double()[:2, 0]))
    assert (ce[:2] > 0).all(), "confident examples must not round to 0"
    assert_close_to_reference(ce[:2], exact, "float32", name="confident ce")
    assert_close_to_reference(ce[2], ref[2], "float32", name="ce")
    assert torch.nn.functional.cross_entropy(z, y, reduction="none")[0] == 0  # what the plain form gives
