"""The LDS baselines (daunce_fast.evaluation.baselines) and the LDS study's command line
(bench/quality/lds.py, run as a script in a subprocess: no test imports bench/) on a tiny ground
truth of daunce_fast.evaluation.groundtruth."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daunce_fast.demos.tasks import mlp
from daunce_fast.evaluation.baselines import ExactIF, hessian, if_dattri, trak
from daunce_fast.evaluation.groundtruth import Recipe, build

ROOT = Path(__file__).resolve().parents[2]


def _data(n=37, d=5, c=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


# ---------------------------------------------------------------------------------------------
# Baselines (daunce_fast.evaluation.baselines) and the study (bench/quality/lds.py) on a tiny ground truth.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gt():
    torch.manual_seed(0)
    r = Recipe("breast_cancer", hidden=4, depth=1, epochs=3, lr=1e-2, batch_size=64, weight_decay=0.0)
    return build(r, num_subsets=8, runs_per_subset=1, extra_ckpts=1)


def test_hessian_matches_torch_func():
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
    s, _ = trak(tiny_gt, num_ckpts=2, regularization=1.0, proj_dim=16)
    assert s.shape == (tiny_gt["subsets"].shape[1], tiny_gt["targets"].shape[1]) and torch.isfinite(s).all()
    z = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    logp = -torch.nn.functional.cross_entropy(z, y, reduction="none")
    dattri_f = logp - torch.log(1 - torch.exp(logp))
    zy = z.gather(1, y[:, None]).squeeze(1)
    ours = zy - torch.logsumexp(z.masked_fill(torch.arange(3) == y[:, None], float("-inf")), dim=1)
    torch.testing.assert_close(ours, dattri_f, atol=1e-5, rtol=1e-5)


def test_lds_cli_end_to_end(tiny_gt, tmp_path):
    """bench/quality/lds.py, run as a script on the tiny ground truth (--ground-truth) with its smallest
    options: every baseline and DAUNCE give one row per setting, recorded under DAUNCE_FAST_BENCH_OUT
    (the Hessian cache goes there too). DAUNCE is the library's own class, so a keyword the script
    passes that Daunce does not accept fails the run."""
    pytest.importorskip("dattri")
    gt_path = tmp_path / "gt.pt"
    torch.save(tiny_gt, gt_path)
    env = {
        **os.environ,
        "DAUNCE_FAST_BENCH_OUT": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "quality" / "lds.py"),
        "--dataset",
        "breast_cancer",
        "--ground-truth",
        str(gt_path),
        "--methods",
        "graddot,trak1,if,daunce",
        "--trak-reg",
        "1",
        "--trak-proj-dim",
        "16",
        "--if-damping",
        "0.1",
        "--K",
        "8,16",
        "--epochs",
        "1",
        "--objective",
        "if",
        "--score-method",
        "pearson,covariance",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert (tmp_path / "out" / "hessian_breast_cancer.pt").exists()
    by = {(r["method"], r["params"]): r for r in rows}
    assert len(rows) == len(by) == 1 + 1 + 1 + 4
    assert all(r["bench"] == "lds" and r["dataset"] == "breast_cancer" for r in rows)
    daunce_rows = [r for r in rows if r["method"] == "daunce"]
    assert [r["params"].split()[0] for r in daunce_rows] == ["K=8", "K=8", "K=16", "K=16"]
    assert [r["params"].split()[-1] for r in daunce_rows] == ["score=pearson", "score=covariance"] * 2
    for r in daunce_rows:  # the library's defaults: the hessian perturbation at its rho
        assert " hessian rho=0.03 " in r["params"]
        assert r["wall_s"] >= r["fit_s"] > 0
    assert all(-1 <= r["lds"] <= 1 and r["wall_s"] >= 0 for r in by.values())
