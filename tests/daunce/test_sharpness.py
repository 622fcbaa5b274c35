"""daunce_fast.daunce.sharpness: the sharpness measurement behind the lr calibration candidate."""

import torch

from daunce_fast.daunce.sharpness import lr_from_sharpness, sharpness


def _quadratic(n=200, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.2, 3.0, d)
    y = torch.randn(n, 1, generator=g)
    model = torch.nn.Linear(d, 1, bias=False)

    def half_mse(out, t):
        return 0.5 * ((out - t) ** 2).sum(1).mean()

    return model, x, y, half_mse


def test_quadratic_top_eigenvalue_within_1_percent():
    model, x, y, loss = _quadratic()
    res = sharpness(model, x, y, loss_fn=loss, subsample=len(y), iters=200, tol=1e-8)
    want = torch.linalg.eigvalsh(x.T @ x / len(y)).max().item()  # Hessian of 0.5 mean (xw - y)^2
    assert abs(res.value - want) / want < 0.01, (res.value, want)
    assert res.subsample == len(y)


def test_deterministic_for_a_seed_and_leaves_model_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(300, 8), torch.randint(0, 3, (300,))
    before = [p.detach().clone() for p in model.parameters()]
    a = sharpness(model, x, y, subsample=100, iters=10, seed=3)
    b = sharpness(model, x, y, subsample=100, iters=10, seed=3)
    assert a.value == b.value and a.iters == b.iters
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert model.training
    c = sharpness(model, x, y, subsample=100, iters=10, seed=4)  # another subsample
    assert c.value != a.value


def test_work_scales_with_the_subsample():
    """Runtime is proportional to the examples in the loss: count the rows the model sees."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = torch.randn(1000, 4), torch.randint(0, 2, (1000,))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    for k in (50, 400):
        seen.clear()
        res = sharpness(model, x, y, subsample=k, iters=5, tol=0.0)
        assert res.subsample == k and sum(seen) == k  # one forward over the subsample, HVPs reuse it
        assert res.iters == 5


def test_lr_rule():
    assert lr_from_sharpness(10.0, c=0.02) == 0.002
    assert lr_from_sharpness(1e-9, c=0.02) == 0.1  # clipped
    assert lr_from_sharpness(-1.0, c=0.02) == 0.1
    assert lr_from_sharpness(1e6, c=0.02) == 1e-5


def test_preconditioned_quadratic():
    """With a diagonal D, the top eigenvalue of D^½ H D^½."""
    from daunce_fast.daunce.sharpness import adam_preconditioner

    model, x, y, loss = _quadratic()
    d = torch.linspace(0.5, 2.0, x.shape[1])[None, :]  # shape of the weight [1, d]
    res = sharpness(model, x, y, loss_fn=loss, subsample=len(y), iters=300, tol=1e-9, precond=[d])
    h = x.T @ x / len(y)
    r = d[0].sqrt()
    want = torch.linalg.eigvalsh(r[:, None] * h * r[None, :]).max().item()
    assert abs(res.value - want) / want < 0.01, (res.value, want)
    p = adam_preconditioner(model, x, y, loss_fn=loss, batch_size=50, subsample=len(y))
    assert p[0].shape == model.weight.shape and bool((p[0] > 0).all())


def test_indefinite_hessian_gives_the_top_algebraic_eigenvalue():
    """A dominant negative eigenvalue (-5) must not be returned: λ_max is the largest one (2)."""

    class Quad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x

    a = torch.diag(torch.tensor([-5.0, 2.0, 0.5]))
    model = Quad()
    res = sharpness(
        model,
        torch.zeros(4, 1),
        torch.zeros(4),
        loss_fn=lambda out, t: 0.5 * model.w @ a @ model.w,
        iters=500,
        tol=1e-10,
    )
    assert abs(res.value - 2.0) < 0.02, res
