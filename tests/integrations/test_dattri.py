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
    # same numbers as the pipeline's own scores
    from daunce_fast.daunce import Daunce

    d = Daunce(model, workdir=tmp_path / "w", **OPTS)
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
