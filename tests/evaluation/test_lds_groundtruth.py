"""The batched trainer of daunce_fast.evaluation.groundtruth is the plain demos.tasks.train_classifier run per model."""

import pytest
import torch

from daunce_fast.demos.tasks import mlp, train_classifier
from daunce_fast.evaluation.groundtruth import (
    Recipe,
    batched_forward,
    build,
    draw_subsets,
    epoch_orders,
    per_example_loss,
    stack_mlps,
    train_batched,
)


def _data(n=37, d=5, c=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_batched_trainer_equals_plain(optimizer, dtype, tol):
    x, y = _data(dtype=dtype)
    n, d = x.shape
    subsets = draw_subsets(n, 3, seed=7)
    rows = torch.stack([m.nonzero().squeeze(1) for m in subsets])  # [3, 18]: last batch is partial
    seeds = [11, 12, 13]
    epochs, bs, lr, wd = 4, 5, 1e-2, 1e-3
    models = [mlp(d, 3, hidden=6, depth=2, seed=s).to(dtype) for s in seeds]
    init = stack_mlps(models)
    got = train_batched(
        init,
        x,
        y,
        rows,
        epoch_orders(seeds, rows.shape[1], epochs),
        lr=lr,
        batch_size=bs,
        weight_decay=wd,
        optimizer=optimizer,
    )
    worst = 0.0
    for k, (m, s) in enumerate(zip(models, seeds)):
        train_classifier(
            m, x[rows[k]], y[rows[k]], epochs=epochs, lr=lr, batch_size=bs, weight_decay=wd, seed=s, optimizer=optimizer
        )
        for p_plain, p_b, p_0 in zip(m.parameters(), got, init):
            worst = max(worst, (p_plain.detach() - p_b[k]).abs().max().item())
            assert (p_b[k] - p_0[k]).abs().max() > 1e-3  # it trained
    print(f"max |batched - plain| = {worst:.3g}")
    assert worst <= tol


def test_batched_forward_and_losses():
    x, y = _data()
    models = [mlp(5, 3, hidden=4, depth=1, seed=s) for s in (1, 2)]
    p = stack_mlps(models)
    want = torch.stack([m(x) for m in models])
    torch.testing.assert_close(batched_forward(p, x), want)  # shared input
    torch.testing.assert_close(batched_forward(p, x.expand(2, *x.shape)), want)  # per-model input
    ce = torch.stack([torch.nn.functional.cross_entropy(m(x), y, reduction="none") for m in models])
    torch.testing.assert_close(per_example_loss(p, x, y).float(), ce.detach())


def test_stable_ce_keeps_confident_losses():
    from daunce_fast.evaluation.groundtruth import stable_ce

    z = torch.tensor([[30.0, 0.0, -5.0], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    got = stable_ce(z, y)
    assert torch.nn.functional.cross_entropy(z, y, reduction="none")[0] == 0  # fp32 rounds it away
    want = torch.log1p(torch.exp(torch.tensor([-30.0, -30.0 - 5.0], dtype=torch.float64)).sum())
    assert got[0] == pytest.approx(want.item(), rel=1e-12) and got[0] > 0
    assert got[1].item() == pytest.approx(torch.nn.functional.cross_entropy(z[1:], y[1:]).item(), rel=1e-6)


def test_subsets_exact_half():
    m = draw_subsets(11, 4, seed=3)
    assert m.dtype == torch.bool and m.shape == (4, 11)
    assert (m.sum(1) == 5).all()
    assert not (m[0] == m[1]).all()


def test_build_tiny():
    """End to end on breast_cancer with a tiny recipe: shapes, signs and the recipe round trip."""
    r = Recipe("breast_cancer", hidden=4, depth=1, epochs=2, lr=1e-2, batch_size=64, weight_decay=0.0)
    gt = build(r, num_subsets=6, runs_per_subset=2, extra_ckpts=1)
    n, m = gt["info"]["n_train"], gt["info"]["n_test"]
    assert gt["subsets"].shape == (6, n) and gt["targets"].shape == (6, m)
    assert (gt["targets"] <= 0).all()  # negative losses
    assert gt["model_seeds"].shape == (6, 2) and len(gt["extra_ckpts"]) == 1
    assert gt["recipe"]["epochs"] == 2 and set(gt["theta0"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
