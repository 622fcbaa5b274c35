"""The LDS studies' scripts (bench/lds_baselines.py, bench/lds.py) on a tiny ground truth of
daunce_fast.evaluation.groundtruth. The scripts are not a package: bench/ is put on sys.path."""
import sys
import types
from pathlib import Path

import pytest
import torch

from daunce_fast.demos.tasks import mlp
from daunce_fast.evaluation.groundtruth import Recipe, build

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _data(n=37, d=5, c=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


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
