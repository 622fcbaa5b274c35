"""The batched CNN trainer of daunce_fast.evaluation.groundtruth_cnn equals S separate plain trainings
(BatchNorm in train mode per model, each model's running statistics its own)."""

from __future__ import annotations

import copy

import pytest
import torch

from daunce_fast.evaluation import groundtruth_cnn as gc
from daunce_fast.evaluation.groundtruth import epoch_orders


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_equals_plain_loop(optimizer):
    x, y = _data()
    seeds = [3, 7, 11]
    g = torch.Generator().manual_seed(1)
    rows = torch.stack([torch.randperm(len(y), generator=g)[:20].sort().values for _ in seeds])
    kw = dict(lr=1e-2, batch_size=6, weight_decay=1e-4, optimizer=optimizer)  # 20 = 3 x 6 + 2: a short last batch
    models = [gc.cnn(10, (4, 8), seed=s) for s in seeds]
    init = [copy.deepcopy(m) for m in models]
    params, buffers = gc.train_batched(models, x, y, rows, epoch_orders(seeds, 20, 3), **kw)
    # the input modules are not changed
    for m, m0 in zip(models, init):
        for (k, v), v0 in zip(m.state_dict().items(), m0.state_dict().values()):
            assert torch.equal(v, v0), k
    xt, yt = _data(12, seed=5)
    stacked = gc.stacked_logits(models[0], params, buffers, xt)
    for s, seed in enumerate(seeds):
        ref = gc.train_plain(init[s], x[rows[s]], y[rows[s]], epochs=3, seed=seed, **kw)
        state = gc.unstack(params, buffers, s)
        for k, v in ref.state_dict().items():
            if v.is_floating_point():
                torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5, msg=f"model {s}: {k}")
            else:  # num_batches_tracked
                assert torch.equal(state[k], v), k
        with torch.no_grad():
            torch.testing.assert_close(stacked[s], ref.eval()(xt), rtol=1e-4, atol=1e-5)


def test_batchnorm_statistics_are_per_model():
    """Model 0's training does not depend on model 1's examples (no statistics mixed across models)."""
    x, y = _data()
    seeds = [0, 1]
    orders = epoch_orders(seeds, 10, 2)
    kw = dict(lr=1e-2, batch_size=5, weight_decay=0.0)
    rows_a = torch.stack([torch.arange(10), torch.arange(10, 20)])
    rows_b = torch.stack([torch.arange(10), torch.arange(30, 40)])
    pa, ba = gc.train_batched([gc.cnn(10, (4, 8), seed=s) for s in seeds], x, y, rows_a, orders, **kw)
    pb, bb = gc.train_batched([gc.cnn(10, (4, 8), seed=s) for s in seeds], x, y, rows_b, orders, **kw)
    for k in pa:
        torch.testing.assert_close(pa[k][0], pb[k][0], rtol=0, atol=1e-6)
    for k in ba:
        torch.testing.assert_close(ba[k][0], bb[k][0], rtol=0, atol=1e-6)
    assert not torch.allclose(ba["1.running_mean"][1], bb["1.running_mean"][1])


def test_image_task_and_model_from_state():
    r = gc.CNNRecipe(channels=(4, 8))
    t = gc.load_image_task(r)
    assert t.x_train.shape[1:] == (1, 8, 8) and t.x_test.shape[1:] == (1, 8, 8)
    m = gc.cnn(10, (4, 8), seed=0)
    gt = {"recipe": {**vars(r), "channels": [4, 8]}, "theta0": m.state_dict()}
    m2 = gc.model_from_state(gt)
    assert not m2.training
    with torch.no_grad():
        torch.testing.assert_close(m2(t.x_test[:5]), m.eval()(t.x_test[:5]))
