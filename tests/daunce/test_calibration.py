"""lr="auto" / epochs="auto": the calibration rule, its wiring into fit, its record in the workdir,
resume after a crash mid-calibration, explicit values winning, and the first chunk's diagnostics."""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from daunce_fast import Daunce
from daunce_fast.daunce import calibration
from daunce_fast.daunce.config import DaunceConfig


def _data(n=90, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :c].argmax(1) + (torch.rand(n, generator=g) < 0.1).long()) % c
    return x, y


def _theta0(x, y, steps=200, lr=3e-2, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, int(y.max()) + 1))
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m


@pytest.fixture(scope="module")
def task():
    x, y = _data()
    return _theta0(x, y), TensorDataset(x, y)


def _mean_ce(model, ds):
    x, y = ds.tensors
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y, reduction="none").double().mean().item()


# ---------------------------------------------------------------------------------------- the rule
def test_rule_formula_rounding_and_sources():
    cfg = DaunceConfig(batch_size=32, ratio=0.5).validate()
    assert cfg.lr == "auto" and cfg.epochs == "auto"
    cal = calibration.calibrate(cfg, 1000, 0.01)
    steps = calibration.AUTO_EPOCHS * math.ceil(500 / 32)
    want = calibration.DISPLACEMENT / (steps * (1 + 0.01 / calibration.LOSS_SCALE))
    assert cal.steps == steps and cal.epochs == calibration.AUTO_EPOCHS
    assert cal.lr == float(f"{want:.3g}") and abs(cal.lr - want) <= 5e-3 * want
    assert (cal.lr_source, cal.epochs_source) == ("auto", "auto")
    # an under-fit θ0 (larger training loss) gets a smaller lr; more data (more steps) too
    assert calibration.calibrate(cfg, 1000, 0.5).lr < cal.lr
    assert calibration.calibrate(cfg, 4000, 0.01).lr < cal.lr


def test_explicit_values_win_and_steps_override_epochs():
    cal = calibration.calibrate(DaunceConfig(lr=3e-3, epochs=7).validate(), 1000, 0.1)
    assert (cal.lr, cal.epochs, cal.lr_source, cal.epochs_source) == (3e-3, 7.0, "given", "given")
    cal = calibration.calibrate(DaunceConfig(epochs=5).validate(), 1000, 0.0)
    assert cal.epochs == 5.0 and cal.lr_source == "auto" and cal.steps == 5 * math.ceil(500 / 128)
    cal = calibration.calibrate(DaunceConfig(steps=40).validate(), 1000, 0.0)
    assert cal.steps == 40 and cal.epochs is None and cal.epochs_source == "steps"
    assert cal.lr == float(f"{calibration.DISPLACEMENT / 40:.3g}")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer="sgd"), "calibrated for Adam"),
        (dict(lr=-1e-3), "lr must be"),
        (dict(lr="fast"), "lr must be"),
        (dict(lr=True), "lr must be"),
        (dict(epochs="many"), "epochs"),
        (dict(epochs=0), "epochs"),
    ],
)
def test_bad_values_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DaunceConfig(**kw).validate()
    DaunceConfig(optimizer="sgd", lr=1e-2).validate()  # sgd with a given lr is fine


def test_non_finite_theta0_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="mean training loss"):
        calibration.calibrate(DaunceConfig().validate(), 100, float("nan"))


# ------------------------------------------------------------------------------------ the pipeline
def test_fit_trains_with_the_calibrated_values_and_records_them(task, tmp_path):
    model, ds = task
    d = Daunce(model, num_models=8, workdir=tmp_path / "auto")
    d.fit(ds)
    cal = d.calibration
    assert cal is not None and cal.lr_source == "auto" and cal.epochs == calibration.AUTO_EPOCHS
    assert cal.theta0_loss == pytest.approx(_mean_ce(model, ds), rel=1e-5)
    assert cal.lr == calibration.calibrate(d.config, len(ds), cal.theta0_loss).lr
    saved = json.loads((tmp_path / "auto" / "calibration.json").read_text())
    assert saved["lr"] == cal.lr and saved["steps"] == cal.steps and saved["diagnostics"]["warnings"] == []
    # the copies trained with exactly those values: the same run with them given explicitly is identical
    e = Daunce(model, num_models=8, workdir=tmp_path / "given", lr=cal.lr, epochs=cal.epochs)
    e.fit(ds)
    assert e.calibration.lr_source == "given"
    np.testing.assert_array_equal(np.asarray(d.losses()), np.asarray(e.losses()))
    # another object on the same workdir reads the calibration back
    assert Daunce(model, num_models=8, workdir=tmp_path / "auto").calibration == cal


def test_calibration_is_deterministic(task, tmp_path):
    model, ds = task
    runs = []
    for i in range(2):
        d = Daunce(model, num_models=6, workdir=tmp_path / str(i))
        d.fit(ds)
        runs.append((d.calibration, np.asarray(d.losses()).copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_resume_after_a_crash_mid_calibration(task, tmp_path, monkeypatch):
    model, ds = task
    ref = Daunce(model, num_models=6, workdir=tmp_path / "ref")
    ref.fit(ds)

    real = calibration.calibrate
    calls = []

    def crash(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt("killed while calibrating")

    monkeypatch.setattr(calibration, "calibrate", crash)
    with pytest.raises(KeyboardInterrupt):
        Daunce(model, num_models=6, workdir=tmp_path / "run").fit(ds)
    assert calls and not (tmp_path / "run" / "calibration.json").exists()
    assert not list((tmp_path / "run").glob(".*tmp"))
    monkeypatch.setattr(calibration, "calibrate", real)
    d = Daunce(model, num_models=6, workdir=tmp_path / "run")
    d.fit(ds)
    assert d.calibration == ref.calibration
    np.testing.assert_array_equal(np.asarray(d.losses()), np.asarray(ref.losses()))


def test_resume_after_a_crash_between_calibration_and_training(task, tmp_path, monkeypatch):
    from daunce_fast.daunce import pipeline

    model, ds = task
    ref = Daunce(model, num_models=6, workdir=tmp_path / "ref", adapter_chunk=3)
    ref.fit(ds)
    real = pipeline.train_chunk
    n = []

    def second_chunk_dies(*a, **k):
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt("killed in chunk 1")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "train_chunk", second_chunk_dies)
    with pytest.raises(KeyboardInterrupt):
        Daunce(model, num_models=6, workdir=tmp_path / "run", adapter_chunk=3).fit(ds)
    assert json.loads((tmp_path / "run" / "calibration.json").read_text())["lr"] == ref.calibration.lr
    monkeypatch.setattr(pipeline, "train_chunk", real)
    d = Daunce(model, num_models=6, workdir=tmp_path / "run", adapter_chunk=3)
    d.fit(ds)
    np.testing.assert_array_equal(np.asarray(d.losses()), np.asarray(ref.losses()))


def test_stale_calibration_file_is_not_reported(task, tmp_path):
    model, ds = task
    d = Daunce(model, num_models=4, workdir=tmp_path)
    d.fit(ds)
    f = tmp_path / "calibration.json"
    # another run in the same workdir (overwrite=True) wipes it with the rest of the old run
    from daunce_fast.daunce.workdir import wipe

    wipe(tmp_path)
    assert not f.exists()
    d.fit(ds)
    data = json.loads(f.read_text())
    data["run"] = "0" * 32  # a file of another run
    f.write_text(json.dumps(data))
    assert Daunce(model, num_models=4, workdir=tmp_path).calibration is None


def test_blackbox_objective_is_calibrated_from_one_base_pass(task, tmp_path):
    model, ds = task
    d = Daunce(model, num_models=4, workdir=tmp_path, objective="blackbox", perturbation="xi")
    d.fit(ds)
    assert d.calibration.theta0_loss == pytest.approx(_mean_ce(model, ds), rel=1e-5)


def test_language_models_refuse_auto_lr():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    lm = LlamaForCausalLM(cfg)
    assert Daunce(lm, num_models=2).config.lr == 1e-3  # the LM default, not "auto"
    with pytest.raises(ValueError, match="calibrated for classifiers"):
        Daunce(lm, num_models=2, lr="auto")


# ------------------------------------------------------------------------------------- diagnostics
def _daunce_warnings(rec):
    return [str(w.message) for w in rec if "Daunce:" in str(w.message)]


def test_no_warning_on_a_healthy_run(task, tmp_path):
    model, ds = task
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        Daunce(model, num_models=8, workdir=tmp_path).fit(ds)
    assert _daunce_warnings(rec) == []


def test_copies_that_barely_move_warn(task, tmp_path):
    model, ds = task
    with pytest.warns(RuntimeWarning, match="still: .*scores are noise"):
        Daunce(model, num_models=8, workdir=tmp_path, lr=1e-12).fit(ds)
    d = json.loads((tmp_path / "calibration.json").read_text())["diagnostics"]
    assert d["spread"] < calibration.STILL_SPREAD and d["warnings"]


def test_diverging_copies_warn(task, tmp_path):
    model, ds = task
    with pytest.warns(RuntimeWarning, match="diverged"):
        Daunce(model, num_models=8, workdir=tmp_path, lr=30.0).fit(ds)


def test_diagnose_counts_non_finite_targets():
    rows = np.ones((4, 5), np.float32)
    rows[1, 2] = np.nan
    d = calibration.diagnose(rows, 0.1, loss_target=True)
    assert d["nonfinite"] == 1 and any("not finite" in w for w in d["warnings"])


def test_inspect_prints_the_calibration_and_warnings(task, tmp_path):
    model, ds = task
    with pytest.warns(RuntimeWarning):
        Daunce(model, num_models=4, workdir=tmp_path, lr=1e-12).fit(ds)
    out = subprocess.run(
        [sys.executable, "-m", "daunce_fast", "inspect", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert f"calibration: lr 1e-12 (given), epochs {float(calibration.AUTO_EPOCHS)} (auto)" in out
    assert "WARNING: still" in out and "train.safetensors" in out
    bad = subprocess.run(
        [sys.executable, "-m", "daunce_fast", "inspect", str(tmp_path / "losses")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a Daunce workdir" in bad.stderr


def test_refit_on_another_training_set_of_the_same_size_recalibrates(task, tmp_path):
    model, ds = task
    x, y = ds.tensors
    other = TensorDataset(x, (y + 1) % 3)  # same size, other labels: θ0's loss is far higher
    d = Daunce(model, num_models=4, workdir=tmp_path, overwrite=True)
    d.fit(ds)
    first = d.calibration
    d.fit(other)
    assert d.calibration.theta0_loss == pytest.approx(_mean_ce(model, other), rel=1e-5)
    assert d.calibration.theta0_loss > first.theta0_loss and d.calibration.lr < first.lr
    assert json.loads((tmp_path / "calibration.json").read_text())["lr"] == d.calibration.lr
