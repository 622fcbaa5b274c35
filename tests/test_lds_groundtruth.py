"""The batched trainer of bench/lds_data.py is the plain examples.train_classifier run per model."""
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from lds_data import (  # noqa: E402
    Recipe, batched_forward, build, draw_subsets, epoch_orders, per_example_loss, stack_mlps, train_batched)

from daunce_fast.examples import mlp, train_classifier  # noqa: E402


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
    got = train_batched(init, x, y, rows, epoch_orders(seeds, rows.shape[1], epochs), lr=lr, batch_size=bs,
                        weight_decay=wd, optimizer=optimizer)
    worst = 0.0
    for k, (m, s) in enumerate(zip(models, seeds)):
        train_classifier(m, x[rows[k]], y[rows[k]], epochs=epochs, lr=lr, batch_size=bs, weight_decay=wd,
                         seed=s, optimizer=optimizer)
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
    from lds_data import stable_ce

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


# ---------------------------------------------------------------------------------------------
# Baselines (bench/lds_baselines.py) and the harness (bench/lds.py) on a tiny ground truth.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gt():
    torch.manual_seed(0)
    r = Recipe("breast_cancer", hidden=4, depth=1, epochs=3, lr=1e-2, batch_size=64, weight_decay=0.0)
    return build(r, num_subsets=8, runs_per_subset=1, extra_ckpts=1)


def test_hessian_matches_torch_func():
    from lds_baselines import hessian

    x, y = _data(n=9, d=3)
    m = mlp(3, 3, hidden=4, depth=1, seed=0)
    names = [k for k, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    sizes = [p.numel() for _, p in m.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(f):
        ps = {k: t.view(s) for k, t, s in zip(names, f.split(sizes), shapes)}
        return torch.nn.functional.cross_entropy(torch.func.functional_call(m, ps, x), y)

    want = torch.func.hessian(loss)(flat)
    torch.testing.assert_close(hessian(m, x, y, chunk=7), (want + want.T) / 2, atol=1e-5, rtol=1e-4)


def test_exact_if_matches_dattri_explicit(tiny_gt, tmp_path):
    pytest.importorskip("dattri")
    from lds_baselines import ExactIF, if_dattri

    ex = ExactIF(tiny_gt, cache=tmp_path / "h.pt")
    ours, _ = ex.scores(0.1)
    theirs, _ = if_dattri(tiny_gt, regularization=0.1)
    assert theirs.shape == ours.shape == (tiny_gt["subsets"].shape[1], tiny_gt["targets"].shape[1])
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-3, atol=1e-3 * theirs.abs().max().item())
    again = ExactIF(tiny_gt, cache=tmp_path / "h.pt")  # from the cache: same eigendecomposition
    torch.testing.assert_close(again.scores(0.1)[0], ours)


def test_trak_margin_matches_dattri_formula(tiny_gt):
    """Our stable log-odds equals dattri's logp - log(1 - exp(logp)) where the latter is finite, so
    TRAK runs with dattri's function; and TRAK returns [N_train, N_test] finite scores."""
    pytest.importorskip("dattri")
    from lds_baselines import trak

    s, _ = trak(tiny_gt, num_ckpts=2, regularization=1.0, proj_dim=16)
    assert s.shape == (tiny_gt["subsets"].shape[1], tiny_gt["targets"].shape[1]) and torch.isfinite(s).all()
    z = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    logp = -torch.nn.functional.cross_entropy(z, y, reduction="none")
    dattri_f = logp - torch.log(1 - torch.exp(logp))
    zy = z.gather(1, y[:, None]).squeeze(1)
    ours = zy - torch.logsumexp(z.masked_fill(torch.arange(3) == y[:, None], float("-inf")), dim=1)
    torch.testing.assert_close(ours, dattri_f, atol=1e-5, rtol=1e-5)


def test_lds_cli_end_to_end_with_fake_daunce(tiny_gt, tmp_path, monkeypatch):
    """bench/lds.py runs baselines and calls the daunce hook with the agreed API (a stand-in class
    here: it checks the arguments and returns grad-dot scores)."""
    import lds as lds_cli

    import daunce_fast

    monkeypatch.setattr(lds_cli, "load_or_build", lambda name, **kw: tiny_gt)
    monkeypatch.setattr(lds_cli, "CACHE", tmp_path)
    calls = []

    class FakeDaunce:
        def __init__(self, model, **kw):
            calls.append(kw)
            assert isinstance(model, torch.nn.Module)
            assert set(kw) == {"num_models", "ratio", "objective", "rho", "gamma", "rank", "optimizer", "lr",
                               "epochs", "batch_size", "seed", "workdir", "perturbation"}
            self.model = model
            self.config = types.SimpleNamespace(rho=0.03 if kw["rho"] is None else kw["rho"])

        def fit(self, train):
            assert isinstance(train, torch.utils.data.TensorDataset)

        def scores(self, train, test, method):
            from lds_baselines import per_example_grads

            assert method in ("pearson", "covariance")
            g_tr = per_example_grads(self.model, *train.tensors)
            g_te = per_example_grads(self.model, *test.tensors)
            return (g_tr @ g_te.T).numpy()

    monkeypatch.setitem(vars(daunce_fast), "Daunce", FakeDaunce)  # no lazy import of the real one
    rows = lds_cli.main(["--dataset", "breast_cancer", "--methods", "graddot,trak1,if,daunce", "--trak-reg", "1",
                         "--trak-proj-dim", "16", "--if-damping", "0.1", "--K", "8,16", "--objective", "if",
                         "--score-method", "pearson,covariance", "--no-record"])
    by = {(r["method"], r["params"]): r for r in rows}
    assert len(rows) == 1 + 1 + 1 + 4
    assert [c["num_models"] for c in calls] == [8, 16] and calls[0]["rank"] == "full"
    assert calls[0]["perturbation"] == "hessian" and calls[0]["rho"] is None  # the library's defaults
    daunce_rows = [r for r in rows if r["method"] == "daunce"]
    graddot = next(r for r in rows if r["method"] == "graddot")
    for r in daunce_rows:  # the stand-in returns grad-dot scores: same LDS
        assert r["lds"] == pytest.approx(graddot["lds"], abs=1e-6)
    assert all(-1 <= r["lds"] <= 1 and r["wall_s"] >= 0 for r in by.values())
