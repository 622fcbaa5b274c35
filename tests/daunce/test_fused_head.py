"""The fused DAUNCE head (daunce/fused_head.py) against the autograd reference objectives.daunce_loss:
value and gradient in float64 on fresh random inputs, and the float32 gradient bit for bit (training
with Adam magnifies any rounding difference of the gradient in the recorded losses)."""

import pytest
import torch

from daunce_fast.daunce.fused_head import first_order_terms, fused_objective
from daunce_fast.daunce.heads import hessian_direction
from daunce_fast.daunce.objectives import base_terms, cross_entropy_per_example, daunce_loss, neg_margin_per_example
from daunce_fast.daunce.perturb import hashed_normal


def _case(K, b, C, objective, hessian, dtype, seed, scale=3.0, extreme=False):
    g = torch.Generator().manual_seed(seed)
    N = K * b
    z0 = torch.randn(N, C, generator=g, dtype=dtype) * scale
    if extreme:  # logits at +-80: probabilities that underflow, losses of exp(-160)
        z0 = torch.where(torch.rand(N, C, generator=g) < 0.5, -80.0, 80.0).to(dtype) + 0.1 * z0
    z = z0 + 0.3 * torch.randn(N, C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=g)
    target = neg_margin_per_example if objective == "margin" else cross_entropy_per_example
    t0, g0 = base_terms(z0, y, target)
    if hessian:
        c = torch.ones(K, b, dtype=torch.float64)
        normals = hashed_normal(seed, torch.arange(K), torch.randint(0, 100, (K, b), generator=g), C).to(dtype)
        scale_k = torch.full((K,), 0.03, dtype=dtype) * torch.where(torch.arange(K) % 2 == 1, -1.0, 1.0).to(dtype)
        sq0 = torch.softmax(z0, -1).sqrt()
        noise = (normals, scale_k, sq0)
    else:
        c = torch.rand(K, b, generator=g, dtype=torch.float64) * 2 - 0.5
        noise = None
    return z, z0, y, c, t0, g0, noise, target


def _reference(z, z0, y, c, t0, g0, noise, target, K, objective, gamma):
    g_full = g0 if noise is None else g0 + hessian_direction(noise[2], noise[0], noise[1]).to(g0.dtype)
    zz = z.clone().requires_grad_(True)
    obj, _ = daunce_loss(
        zz, y, c, num_models=K, objective=objective, gamma=gamma, target_fn=target, z0=z0, t0=t0, g0=g_full
    )
    (grad,) = torch.autograd.grad(obj.sum(), zz)
    return obj.detach(), grad


def _fused(z, z0, y, c, t0, g0, noise, target, K, objective, gamma):
    if noise is None:
        terms = first_order_terms(z0, g0, t0, c)
    else:
        terms = first_order_terms(z0, g0, t0, c, noise[0], noise[1], noise[2])
    zz = z.clone().requires_grad_(True)
    name = "neg_margin" if target is neg_margin_per_example else "ce"
    obj = fused_objective(zz, y, *terms, num_models=K, objective=objective, gamma=gamma, target=name)
    (grad,) = torch.autograd.grad(obj.sum(), zz)
    return obj.detach(), grad


@pytest.mark.parametrize("objective", ["if", "efim", "margin"])
@pytest.mark.parametrize("C", [1, 2, 10, 1000])
@pytest.mark.parametrize("K,b", [(1, 1), (3, 5), (1, 7), (3, 1)])
@pytest.mark.parametrize("extreme", [False, True])
def test_fused_matches_reference_float64(objective, C, K, b, extreme):
    if objective == "margin" and C == 1:  # -margin of a single class: no other class, -inf in both
        args = _case(K, b, C, objective, False, torch.float64, seed=3, extreme=extreme)
        ref_obj, _ = _reference(*args, K, objective, 0.7)
        obj, _ = _fused(*args, K, objective, 0.7)
        assert torch.equal(torch.isfinite(obj), torch.isfinite(ref_obj)) and not torch.isfinite(ref_obj).any()
        return
    for hessian in [False, True] if objective == "if" else [False]:
        args = _case(K, b, C, objective, hessian, torch.float64, seed=C * 31 + K * 7 + b, extreme=extreme)
        ref_obj, ref_grad = _reference(*args, K, objective, 0.7)
        obj, grad = _fused(*args, K, objective, 0.7)
        assert obj.shape == (K,)
        scale = ref_obj.abs().max().item() + args[0].abs().max().item() * args[5].abs().max().item()
        torch.testing.assert_close(obj, ref_obj, rtol=1e-12, atol=1e-12 * scale)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("objective,hessian", [("if", True), ("if", False), ("efim", False), ("margin", False)])
@pytest.mark.parametrize("C", [1, 2, 10, 1000])
def test_fused_gradient_is_the_reference_bit_for_bit_in_float32(objective, hessian, C):
    K, b = 3, 37
    if objective == "margin" and C == 1:  # undefined (-inf objective): both give the same non-finite gradient pattern
        args = _case(K, b, C, objective, hessian, torch.float32, seed=5 + C)
        _, ref_grad = _reference(*args, K, objective, 1.0)
        _, grad = _fused(*args, K, objective, 1.0)
        assert torch.equal(torch.isfinite(grad), torch.isfinite(ref_grad))
        return
    args = _case(K, b, C, objective, hessian, torch.float32, seed=5 + C)
    _, ref_grad = _reference(*args, K, objective, 1.0)
    _, grad = _fused(*args, K, objective, 1.0)
    assert torch.equal(grad, ref_grad), (grad - ref_grad).abs().max()


def test_gradient_of_one_model_touches_only_its_rows_and_weighted_backward():
    K, b, C = 3, 4, 6
    z, z0, y, c, t0, g0, noise, target = _case(K, b, C, "efim", False, torch.float64, seed=11)
    terms = first_order_terms(z0, g0, t0, c)
    zz = z.clone().requires_grad_(True)
    obj = fused_objective(zz, y, *terms, num_models=K, objective="efim", gamma=0.5, target="ce")
    w = torch.tensor([0.0, 2.5, 0.0], dtype=torch.float64)
    (gz,) = torch.autograd.grad(obj, zz, w)
    gz = gz.view(K, b, C)
    assert gz[0].abs().max() == 0 and gz[2].abs().max() == 0 and gz[1].abs().max() > 0
    zr = z.clone().requires_grad_(True)
    ref, _ = daunce_loss(zr, y, c, num_models=K, objective="efim", gamma=0.5, target_fn=target, z0=z0, t0=t0, g0=g0)
    (gr,) = torch.autograd.grad(ref, zr, w)
    torch.testing.assert_close(gz.view(-1, C), gr, rtol=1e-12, atol=1e-14)


def test_rejects_what_it_does_not_compute():
    z = torch.zeros(4, 3)
    t = first_order_terms(z, z, torch.zeros(4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="not supported"):
        fused_objective(
            z, torch.zeros(4, dtype=torch.long), *t, num_models=2, objective="blackbox", gamma=1.0, target="ce"
        )
    with pytest.raises(ValueError, match="K=3"):
        fused_objective(z, torch.zeros(4, dtype=torch.long), *t, num_models=3, objective="if", gamma=1.0, target="ce")
