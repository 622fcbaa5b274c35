"""lora.shared_prefix alone: labels, boundaries (rows, const, recomputed sizes), the refusals and
the safety net, on tiny models with copy layers attached."""

import logging

import pytest
import torch
from torch import nn

from daunce_fast import lora
from daunce_fast.daunce.data import repeat_for_models
from daunce_fast.lora import shared_prefix as sp

K = 3


def attach(model, targets, batchnorm="eval"):
    model.eval()
    m, params = lora.attach_copies(model, K, "full", 1.0, targets, seed=0, batchnorm=batchnorm)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3)  # copies that differ
    return m


def unsplit(model, inputs):
    rep = repeat_for_models(inputs, K)
    with torch.no_grad(), lora.expected_rows(next(iter(rep.values() if isinstance(rep, dict) else rep)).shape[0]):
        return model(**rep) if isinstance(rep, dict) else model(*rep)


def split_forward(model, inputs):
    s = sp.get_split(model, inputs)
    assert s is not None
    n = next(iter(inputs.values() if isinstance(inputs, dict) else inputs)).shape[0]
    with torch.no_grad(), lora.expected_rows(K * n):
        return s, s.forward_repeated(inputs, K)


class PosTable(nn.Module):
    """A position table [T, d] (no batch dimension) added to per-copy values: passed as it is."""

    def __init__(self, T=5, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.pos, self.proj, self.head = nn.Linear(2, d), nn.Embedding(T, d), nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x, mask=None):
        pos = self.pos(torch.arange(x.size(1), device=x.device))
        h = self.proj(self.emb(x)) + pos
        if mask is not None:
            h = h * mask[..., None]
        return {"logits": self.head(h).mean(1), "hidden": h}


def test_const_boundary_dict_inputs_dict_outputs():
    m = attach(PosTable(), ["proj"])
    x, mask = torch.randn(4, 5, 2), (torch.rand(4, 5) > 0.3).float()
    s, got = split_forward(m, {"x": x, "mask": mask})
    ref = unsplit(m, {"x": x, "mask": mask})
    assert dict(s.boundaries) and ("const" in s.kinds.values() and "rows" in s.kinds.values())
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


class SizeFromInput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        n = x.size(0)  # read on the shared input, used on per-copy values
        return self.b(self.a(x)).reshape(n, 2, 3).flatten(1)


def test_size_read_on_shared_input_is_recomputed_per_copy():
    m = attach(SizeFromInput(), ["b"])
    x = torch.randn(4, 6)
    s, got = split_forward(m, (x,))
    assert s.kinds["size"] == "recompute" and s.labels["a"] == "shared" and s.labels["b"] == "per-copy"
    torch.testing.assert_close(got, unsplit(m, (x,)), rtol=1e-5, atol=1e-6)


class BatchStat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h.mean(0)[:2]  # a statistic over the batch's rows, read per copy


class ARangeRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x) + torch.arange(x.shape[0], dtype=x.dtype)[:, None]  # rows by shape, not by value
        return self.b(h)


class InplaceShared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h)
        h.mul_(2)  # mutates h after the per-copy layer read it
        return y + h


@pytest.mark.parametrize(
    "model, why",
    [(BatchStat, "neither rows nor a constant"), (InplaceShared, "other ops read")],
)
def test_refused(model, why, caplog):
    m = attach(model(), ["b"])
    with caplog.at_level(logging.INFO, logger="daunce_fast.lora.shared_prefix"):
        assert sp.get_split(m, (torch.randn(5, 4),)) is None
    assert why in caplog.text


def test_safety_net_falls_back_and_warns(caplog):
    m = attach(ARangeRows(), ["b"])
    x = torch.randn(5, 4)
    ref = unsplit(m, (x,))
    with caplog.at_level(logging.WARNING, logger="daunce_fast.lora.shared_prefix"):
        with lora.expected_rows(K * 5):
            got = sp.repeated_forward(m, (x,), K, reference=lambda inp: unsplit(m, inp), pick=lambda o, rows: o)
    assert "disabled" in caplog.text
    torch.testing.assert_close(got, ref)
    assert sp.get_split(m, (x,)) is None  # never used again


def test_dropout_in_train_mode_is_per_copy():
    m = attach(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)), ["2"])
    m.train()
    s = sp.get_split(m, (torch.randn(3, 4),))
    assert s.labels["_0"] == "shared" and s.labels["_1"] == "per-copy"


def test_batchnorm_batch_mode_in_training_is_per_copy():
    from daunce_fast.daunce.modes import copy_modes

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 2))
    m = attach(net, ["4"], batchnorm="batch")
    x = torch.randn(4, 1, 8, 8)
    with copy_modes(m, K, batchnorm="batch", dropout=False, training=True):
        s = sp.get_split(m, (x,))
        assert s.labels["_0"] == "shared" and s.labels["_1"] == "per-copy"
    with copy_modes(m, K, batchnorm="batch", dropout=False, training=False):
        s, got = split_forward(m, (x,))
        assert s.labels["_1"] == "shared" and s.labels["_4"] == "per-copy"
        torch.testing.assert_close(got, unsplit(m, (x,)), rtol=1e-5, atol=1e-6)


def test_training_cache_rows_all_written():
    m = attach(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), ["2"])
    x = torch.randn(37, 4)
    sp._BLOCK_BYTES, old = 64, sp._BLOCK_BYTES  # several blocks
    try:
        tp = sp.training_prefix(m, K, 37, lambda idx: (x[idx],))
    finally:
        sp._BLOCK_BYTES = old
    (cache,) = tp.cache
    assert not cache.isnan().any()  # NaN-poisoned on allocation: every row was written
    torch.testing.assert_close(cache, torch.relu(m[0](x)))


def test_training_safety_net_falls_back_and_warns(caplog):
    m = attach(ARangeRows(), ["b"])
    x = torch.randn(10, 4)
    tp = sp.training_prefix(m, K, 10, lambda idx: (x[idx],), require_faster=False)
    idx = torch.randint(0, 10, (K * 4,))
    with torch.no_grad(), lora.expected_rows(K * 4):
        ref = m(x[idx])
        with caplog.at_level(logging.WARNING, logger="daunce_fast.lora.shared_prefix"):
            got = tp.forward((x[idx],), idx, reference=lambda inp: m(*inp), pick=lambda o, rows: o)
    assert "disabled" in caplog.text and tp.state == "off"
    torch.testing.assert_close(got, ref)
