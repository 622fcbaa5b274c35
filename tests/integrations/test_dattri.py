"""DaunceAttributor behind dattri's interface, scored by dattri.metric.lds."""

import numpy as np
import pytest
import torch

from daunce_fast.integrations.dattri import DaunceAttributor

from ..daunce._tiny import OPTS, tiny_task

dattri = pytest.importorskip("dattri")


def loaders():
    model, train, test = tiny_task()
    return model, torch.utils.data.DataLoader(train, batch_size=64), torch.utils.data.DataLoader(test, batch_size=64)


def test_attribute_matches_daunce_scores_and_feeds_dattri_lds(tmp_path):
    from dattri.metric import lds
    from dattri.task import AttributionTask

    model, train_loader, test_loader = loaders()

    def loss_func(params, data):
        x, y = data
        out = torch.func.functional_call(model, params, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    att = DaunceAttributor(task=task, workdir=tmp_path / "w", **OPTS)
    att.cache(train_loader)
    score = att.attribute(train_loader, test_loader)
    assert isinstance(score, torch.Tensor) and score.shape == (240, 40)
    # same numbers as the pipeline's own scores (the task's loss is cross-entropy)
    from daunce_fast.daunce import Daunce

    ce = lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction="none")  # noqa: E731
    d = Daunce(model, workdir=tmp_path / "w", loss_fn=ce, **OPTS)
    ref = np.asarray(d.scores(train_loader.dataset, test_loader.dataset))
    np.testing.assert_allclose(score.numpy(), ref, rtol=1e-6, atol=1e-9)
    # dattri's LDS accepts it (ground truth: 20 random half subsets with made-up targets)
    g = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.randperm(240, generator=g)[:120] for _ in range(20)])
    targets = torch.randn(20, 40, generator=g)
    corr, _ = lds(score, (targets, subsets))
    assert corr.shape == (40,) and torch.isfinite(corr).all()


def test_shuffling_loader_is_refused(tmp_path):
    model, train_loader, _ = loaders()
    shuffled = torch.utils.data.DataLoader(train_loader.dataset, batch_size=64, shuffle=True)
    att = DaunceAttributor(model=model, workdir=tmp_path, **OPTS)
    with pytest.raises(ValueError, match="shuffle"):
        att.cache(shuffled)
    with pytest.raises(ValueError, match="task"):
        DaunceAttributor()


def test_attributor_without_workdir_leaves_no_temporary_directory(tmp_path, monkeypatch):
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, train_loader, test_loader = loaders()
    att = DaunceAttributor(model=model, **OPTS)
    assert att.attribute(train_loader, test_loader).shape == (240, 40)
    assert [p.name for p in tmp_path.iterdir()][0].startswith("daunce_")
    att.close()
    assert list(tmp_path.iterdir()) == []
    att.cache(train_loader)
    del att
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def make_task(model, loss):
    from dattri.task import AttributionTask

    def loss_func(params, data):
        x, y = data
        return loss(torch.func.functional_call(model, params, (x,)), y)

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def test_base_attributor_subclass_and_both_call_conventions(tmp_path):
    from dattri.algorithm.base import BaseAttributor

    model, train_loader, test_loader = loaders()
    sub = torch.utils.data.DataLoader(torch.utils.data.Subset(train_loader.dataset, range(17, 90)), batch_size=13)
    ref = DaunceAttributor(model=model, workdir=tmp_path / "a", **OPTS)
    assert isinstance(ref, BaseAttributor)
    s_if = ref.attribute(train_loader, test_loader)  # influence-function convention: fits on train
    trak = DaunceAttributor(model=model, workdir=tmp_path / "b", **OPTS)
    with pytest.raises(ValueError, match="cache"):
        trak.attribute(test_loader)
    trak.cache(train_loader)
    torch.testing.assert_close(trak.attribute(test_loader), s_if, rtol=1e-6, atol=1e-9)  # TRAK convention
    torch.testing.assert_close(trak.attribute(test_dataloader=test_loader), s_if, rtol=1e-6, atol=1e-9)
    # a subset of the cached training set, in both conventions
    torch.testing.assert_close(trak.attribute(test_loader, train_dataloader=sub), s_if[17:90], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(trak.attribute(sub, test_loader), s_if[17:90], rtol=1e-5, atol=1e-8)
    with pytest.raises(TypeError, match="both by position and by keyword"):
        trak.attribute(sub, test_loader, test_dataloader=test_loader)


def test_the_tasks_own_loss_is_used(tmp_path):
    from daunce_fast.daunce import Daunce

    model, train_loader, test_loader = loaders()
    smooth = lambda z, y: torch.nn.functional.cross_entropy(z, y, label_smoothing=0.3)  # noqa: E731
    att = DaunceAttributor(task=make_task(model, smooth), workdir=tmp_path / "task", **OPTS)
    s_task = att.attribute(train_loader, test_loader)
    per_example = lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.3)  # noqa: E731
    d = Daunce(model, workdir=tmp_path / "ref", loss_fn=per_example, **OPTS)
    d.fit(train_loader.dataset)
    ref = torch.as_tensor(np.asarray(d.scores(train_loader.dataset, test_loader.dataset)))
    torch.testing.assert_close(s_task, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    plain_ce = DaunceAttributor(model=model, workdir=tmp_path / "ce", perturbation="xi", **OPTS)
    assert not torch.allclose(plain_ce.attribute(train_loader, test_loader), s_task, rtol=1e-2)
    # an explicit loss_fn wins over the task's
    explicit = DaunceAttributor(task=make_task(model, smooth), workdir=tmp_path / "ex", loss_fn=per_example, **OPTS)
    torch.testing.assert_close(explicit.attribute(train_loader, test_loader), ref, rtol=1e-6, atol=1e-9)


def test_task_loss_that_does_not_run_the_model_is_a_clear_error(tmp_path):
    from dattri.task import AttributionTask

    model, train_loader, _ = loaders()
    other = torch.nn.Linear(64, 10)

    def loss_func(params, data):
        x, y = data
        return torch.nn.functional.cross_entropy(other(x), y)

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    with pytest.raises(ValueError, match="does not run task.model"):
        DaunceAttributor(task=task, workdir=tmp_path, **OPTS).cache(train_loader)


def test_module_imports_without_dattri():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['dattri'] = None\n"
        "import daunce_fast.integrations.dattri as m\n"
        "assert m.DaunceAttributor.__mro__[1] is object\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
