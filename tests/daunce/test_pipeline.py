"""End-to-end pipeline: determinism, chunk equivalence, resume after a kill, inputs, errors."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from daunce_fast.daunce import Daunce

from ._tiny import OPTS, tiny_task


def fit_losses(tmp_path, name, **kw):
    model, train, test = tiny_task()
    d = Daunce(model, workdir=tmp_path / name, **{**OPTS, **kw})
    d.fit(train, record={"test": test})
    return d, np.array(d.losses("train")), np.array(d.losses("test"))


def test_fit_records_finite_targets_and_leaves_model_untouched(tmp_path):
    model, train, _ = tiny_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d, a, b = fit_losses(tmp_path, "run")
    assert a.shape == (8, len(train)) and b.shape == (8, 40)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert (a.std(0) > 0).mean() > 0.9, "models must differ from each other"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"θ0 parameter {k} changed"
    assert not any("MultiLoRA" in type(m).__name__ for m in model.modules())


def test_deterministic_and_chunk_equivalent(tmp_path):
    _, a1, b1 = fit_losses(tmp_path, "all")
    _, a2, b2 = fit_losses(tmp_path, "again")
    np.testing.assert_array_equal(a1, a2)
    _, a3, b3 = fit_losses(tmp_path, "chunks", adapter_chunk=3)  # chunks 3, 3, 2
    np.testing.assert_allclose(a3, a1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b3, b1, rtol=1e-5, atol=1e-6)


def test_model_k_depends_only_on_its_own_index(tmp_path):
    _, a8, _ = fit_losses(tmp_path, "k8")
    _, a4, _ = fit_losses(tmp_path, "k4", num_models=4)
    np.testing.assert_allclose(a4, a8[:4], rtol=1e-5, atol=1e-6)


def test_resume_after_kill_gives_the_same_result(tmp_path):
    wd = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import daunce_fast.daunce.pipeline as P
        from tests.daunce._tiny import OPTS, tiny_task
        calls = []
        real = P.record_chunk
        def killing(*a, **k):
            calls.append(1)
            if len(calls) == 4:  # chunk 0 recorded for train and test, chunk 1 half recorded
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        P.record_chunk = killing
        model, train, test = tiny_task()
        P.Daunce(model, workdir={str(wd)!r}, adapter_chunk=3, **OPTS).fit(train, record={{"test": test}})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (wd / "losses" / "train.safetensors").exists()
    model, train, test = tiny_task()
    d = Daunce(model, workdir=wd, adapter_chunk=3, **OPTS)
    d.fit(train, record={"test": test})
    _, a_ref, b_ref = fit_losses(tmp_path, "uninterrupted", adapter_chunk=3)
    np.testing.assert_array_equal(np.array(d.losses("train")), a_ref)
    np.testing.assert_array_equal(np.array(d.losses("test")), b_ref)


def test_refit_same_workdir_is_a_no_op_and_other_config_is_refused(tmp_path):
    d, a, _ = fit_losses(tmp_path, "run")
    model, train, test = tiny_task()
    d2 = Daunce(model, workdir=tmp_path / "run", **OPTS)
    d2.fit(train)
    np.testing.assert_array_equal(np.array(d2.losses("train")), a)
    with pytest.raises(ValueError, match="different run"):
        Daunce(model, workdir=tmp_path / "run", **{**OPTS, "rho": 0.9}).fit(train)


def test_record_after_fit_equals_record_during_fit(tmp_path):
    model, train, test = tiny_task()
    d, _, b = fit_losses(tmp_path, "run")
    d2 = Daunce(model, workdir=tmp_path / "run2", **OPTS)
    d2.fit(train)
    d2.record(test, "later")
    np.testing.assert_allclose(np.array(d2.losses("later")), b, rtol=1e-6, atol=1e-7)


def test_dict_dataset_and_dataloader_inputs(tmp_path):
    model, train, _ = tiny_task()
    x, y = train.tensors

    class DictSet(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"input": x[i], "label": y[i]}

    def fwd(m, inputs):
        return m(inputs["input"])

    d1 = Daunce(model, workdir=tmp_path / "a", forward_fn=fwd, **OPTS).fit(DictSet())
    d2 = Daunce(model, workdir=tmp_path / "b", **OPTS).fit(torch.utils.data.DataLoader(train, batch_size=50))
    d3 = Daunce(model, workdir=tmp_path / "c", **OPTS).fit(train)
    ref = np.array(d3.losses())
    np.testing.assert_array_equal(np.array(d1.losses()), ref)
    np.testing.assert_array_equal(np.array(d2.losses()), ref)


@pytest.mark.parametrize("objective", ["efim", "margin", "blackbox"])
def test_other_objectives_and_targets_run(tmp_path, objective):
    _, a, b = fit_losses(tmp_path, objective, objective=objective, target="margin" if objective == "margin" else "loss")
    assert np.isfinite(a).all() and np.isfinite(b).all()


def test_hessian_perturbation_deterministic_chunk_equivalent_and_antithetic(tmp_path):
    kw = dict(perturbation="hessian", rho=0.03)
    _, a1, b1 = fit_losses(tmp_path, "h1", **kw)
    _, a2, _ = fit_losses(tmp_path, "h2", **kw)
    np.testing.assert_array_equal(a1, a2)
    assert np.isfinite(a1).all() and (a1.std(0) > 0).mean() > 0.9
    _, a3, b3 = fit_losses(tmp_path, "h3", adapter_chunk=3, **kw)
    np.testing.assert_allclose(a3, a1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b3, b1, rtol=1e-5, atol=1e-6)
    _, ax, _ = fit_losses(tmp_path, "xi", perturbation="xi")
    assert not np.allclose(ax, a1), "the perturbation must change the models"
    # antithetic pairs share subset and normals with opposite signs: at a small rho the losses
    # of a pair move in opposite directions from their common centre, so their differences from
    # the pair mean anti-correlate across examples (independent pairs would not)
    _, at, _ = fit_losses(tmp_path, "anti", antithetic=True, rho=0.01, perturbation="hessian")
    dev = at - at.reshape(4, 2, -1).mean(1).repeat(2, 0)
    for j in range(4):
        assert np.corrcoef(dev[2 * j], dev[2 * j + 1])[0, 1] < -0.99
    _, ai, _ = fit_losses(tmp_path, "indep", rho=0.01, perturbation="hessian")
    assert np.corrcoef(ai[0] - ai[1], ai[2] - ai[3])[0, 1] > -0.9


def test_hessian_perturbation_refuses_custom_loss_fn_and_custom_loss_defaults_to_xi():
    model, _, _ = tiny_task()
    with pytest.raises(ValueError, match="custom loss_fn"):
        Daunce(model, loss_fn=lambda z, y: z.sum(1), perturbation="hessian")
    d = Daunce(model, loss_fn=lambda z, y: z.sum(1))
    assert d.config.perturbation == "xi" and d.config.rho == 0.3
    d = Daunce(model)
    assert d.config.perturbation == "hessian" and d.config.rho == 0.03


def test_custom_loss_fn_hook(tmp_path):
    model, train, test = tiny_task()
    calls = []

    def smoothed_ce(z, y):
        calls.append(z.shape)
        return torch.nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.1)

    d = Daunce(model, workdir=tmp_path / "h", loss_fn=smoothed_ce, **OPTS).fit(train)
    assert calls and np.isfinite(np.array(d.losses())).all()


def test_bad_options_raise():
    model, _, _ = tiny_task()
    with pytest.raises(TypeError, match="unknown option"):
        Daunce(model, num_modles=4)
    with pytest.raises(ValueError, match="num_models"):
        Daunce(model, num_models=1)


def test_ensemble_scores_of_checkpoints(tmp_path):
    from daunce_fast.daunce import ensemble_scores
    from daunce_fast.demos.tasks import mlp, train_classifier

    model, train, test = tiny_task()
    x, y = train.tensors
    other = train_classifier(mlp(64, 10, hidden=16, seed=1), x, y, epochs=15, lr=1e-2, seed=1)
    runs = [
        Daunce(m, workdir=tmp_path / f"r{i}", **OPTS).fit(train, record={"test": test})
        for i, m in enumerate((model, other))
    ]
    s = [np.asarray(r.scores("train", "test"), dtype=np.float64) for r in runs]
    expect = (s[0] / s[0].std() + s[1] / s[1].std()) / 2
    np.testing.assert_allclose(ensemble_scores(runs, "train", "test"), expect, rtol=1e-12)
    one = ensemble_scores(runs[:1], train, test)
    assert np.array_equal(np.argsort(one, 0, kind="stable"), np.argsort(s[0], 0, kind="stable"))
    with pytest.raises(ValueError, match="at least one"):
        ensemble_scores([], "train", "test")


def test_hessian_noise_table_and_per_step_hashing_agree(tmp_path, monkeypatch):
    from daunce_fast.daunce import trainer

    _, a_table, _ = fit_losses(tmp_path, "table", perturbation="hessian", rho=0.03)
    monkeypatch.setattr(trainer, "NOISE_TABLE_MAX", 0)
    _, a_hash, _ = fit_losses(tmp_path, "hash", perturbation="hessian", rho=0.03)
    np.testing.assert_array_equal(a_hash, a_table)


@pytest.mark.gpu
@pytest.mark.parametrize("perturbation", ["hessian", "xi"])
def test_fit_on_cuda_matches_cpu(tmp_path, perturbation):
    """The same models trained on a CUDA device: the same draws (hashed on the CPU), float32 rounding only."""
    import copy

    model, train, test = tiny_task()
    _, a_cpu, b_cpu = fit_losses(tmp_path, "cpu", perturbation=perturbation)
    d = Daunce(copy.deepcopy(model).cuda(), workdir=tmp_path / "gpu", perturbation=perturbation, **OPTS)
    d.fit(train, record={"test": test})
    np.testing.assert_allclose(np.array(d.losses("train")), a_cpu, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(np.array(d.losses("test")), b_cpu, rtol=2e-3, atol=2e-5)
