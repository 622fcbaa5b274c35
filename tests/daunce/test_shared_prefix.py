"""The shared prefix (docs/pipeline.md#shared-prefix): fit + record with the split equal the unsplit
pipeline to float32 rounding, on models where the split shares something, on models where it must
fall back, and with the default targets (nothing to share)."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daunce_fast import storage
from daunce_fast.daunce import Daunce
from daunce_fast.lora import shared_prefix as sp

from ._cnn import trained_cnn

RTOL, ATOL = 1e-5, 1e-6


class Counter:
    """Counts the split's uses: recording blocks through forward_repeated, training steps through the cache."""

    def __init__(self, monkeypatch):
        self.record = self.train = 0
        self.warnings = []  # the safety net's "disabled" warnings: none expected
        monkeypatch.setattr(sp.logger, "warning", lambda *a, **k: self.warnings.append(a))
        rec, train = sp.Split.forward_repeated, sp.TrainingPrefix._split_forward

        def forward_repeated(split, *a, **k):
            self.record += 1
            return rec(split, *a, **k)

        def split_forward(tp, *a, **k):
            self.train += 1
            return train(tp, *a, **k)

        monkeypatch.setattr(sp.Split, "forward_repeated", forward_repeated)
        monkeypatch.setattr(sp.TrainingPrefix, "_split_forward", split_forward)


def run(tmp_path, name, model, train, test, share, **opts):
    """(train losses, test losses, adapters of chunk 0) of a fit + record; share: extra["share_prefix"]."""
    o = dict(num_models=6, epochs=2, batch_size=16, lr=1e-2, seed=3, rank="full")
    o.update(opts)
    d = Daunce(model, workdir=tmp_path / name, **o, extra={"share_prefix": share})
    d.fit(train, record={"test": test})
    with storage.open(str(d._adapter_path(0))) as r:
        adapters = {k: torch.from_numpy(r[k][...].copy()) for k in r.keys()}
    return torch.from_numpy(d.losses("train").copy()), torch.from_numpy(d.losses("test").copy()), adapters


def assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=RTOL, atol=ATOL)


def compare(tmp_path, monkeypatch, model, train, test, *, shares_record=True, shares_train=True, **opts):
    ref = run(tmp_path, "off", model, train, test, False, **opts)
    count = Counter(monkeypatch)
    got = run(tmp_path, "on", model, train, test, "always", **opts)
    assert_same(got, ref)
    assert (count.record > 0) == shares_record
    assert (count.train > 0) == shares_train
    assert not count.warnings
    return count


def data(n, d, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return torch.utils.data.TensorDataset(x[: n - 12], y[: n - 12] % classes), torch.utils.data.TensorDataset(
        x[n - 12 :], y[n - 12 :] % classes
    )


def mlp(d=8, h=16, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes))


def test_mlp_head_only(tmp_path, monkeypatch):
    train, test = data(60, 8)
    compare(tmp_path, monkeypatch, mlp(), train, test, target_modules=["4"])


@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_cnn_with_batchnorm_head_only(tmp_path, monkeypatch, batchnorm):
    model, train, test = trained_cnn(n=48, steps=20)
    # "batch": the training forward's BatchNorm uses each copy's statistics, so only the first
    # convolution is shared (cached); recording uses θ0's statistics and shares up to the head
    compare(tmp_path, monkeypatch, model, train, test, target_modules=["6"], batchnorm=batchnorm)


def test_cnn_dropout_active_in_training(tmp_path, monkeypatch):
    """dropout=True: the Dropout after the shared convolution is per copy (random), the split stops
    before it; the masks are drawn from the same random state as the unsplit forward's."""
    model, train, test = trained_cnn(n=48, steps=20)
    torch.manual_seed(11)
    ref = run(tmp_path, "off", model, train, test, False, target_modules=["6"], dropout=True)
    Counter(monkeypatch)
    torch.manual_seed(11)
    got = run(tmp_path, "on", model, train, test, "always", target_modules=["6"], dropout=True)
    assert_same(got, ref)


class Residual(nn.Module):
    """A skip connection carries the shared h into the per-copy add."""

    def __init__(self, d=8, h=16, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, classes)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(self.b(h) + h)


def test_residual_skip_carries_shared_tensor(tmp_path, monkeypatch):
    train, test = data(60, 8)
    compare(tmp_path, monkeypatch, Residual(), train, test, target_modules=["b"])


class ViewAfterCopies(nn.Module):
    """``x.view(x.size(0), -1)`` after a perturbed convolution, and a batch size read from the shared
    input and used on per-copy values (must be read on the repeated input)."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, classes)

    def forward(self, x):
        n = x.shape[0]
        y = self.conv(F.relu(self.stem(x)))
        z = self.fc(y.view(y.size(0), -1))
        return z.reshape(n, -1)


def test_view_of_size_after_perturbed_layer(tmp_path, monkeypatch):
    model, train, test = trained_cnn(n=48, steps=5)  # only its images
    compare(tmp_path, monkeypatch, ViewAfterCopies(), train, test, target_modules=["conv", "fc"])


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.net(x)


def test_untraceable_model_falls_back(tmp_path, monkeypatch, caplog):
    train, test = data(60, 8)
    with caplog.at_level(logging.INFO, logger="daunce_fast.lora.shared_prefix"):
        compare(
            tmp_path,
            monkeypatch,
            DataDependent(),
            train,
            test,
            shares_record=False,
            shares_train=False,
            target_modules=["net.4"],
        )
    assert "torch.fx cannot trace it" in caplog.text


def test_default_targets_first_layer_perturbed(tmp_path, monkeypatch):
    """Default targets of an MLP: every Linear, the first included, so nothing is shared."""
    train, test = data(60, 8)
    compare(tmp_path, monkeypatch, mlp(), train, test, shares_record=False, shares_train=False)


def test_switch_off_by_module_flag(tmp_path, monkeypatch):
    train, test = data(60, 8)
    monkeypatch.setattr(sp, "ENABLED", False)
    compare(tmp_path, monkeypatch, mlp(), train, test, shares_record=False, shares_train=False, target_modules=["4"])


def test_cache_budget_off_recording_still_shares(tmp_path, monkeypatch):
    train, test = data(60, 8)
    ref = run(tmp_path, "off", mlp(), train, test, False, target_modules=["4"])
    count = Counter(monkeypatch)
    o = dict(num_models=6, epochs=2, batch_size=16, lr=1e-2, seed=3, rank="full", target_modules=["4"])
    d = Daunce(mlp(), workdir=tmp_path / "budget", **o, extra={"share_prefix": "always", "share_prefix_cache_bytes": 8})
    d.fit(train, record={"test": test})
    torch.testing.assert_close(torch.from_numpy(d.losses("test").copy()), ref[1], rtol=RTOL, atol=ATOL)
    assert count.record > 0 and count.train == 0


def test_training_cache_never_serves_another_training_set(tmp_path, monkeypatch):
    """One Daunce object fitted on a training set, then (overwrite=True) on another of the same size
    and shape: its copies train on the new set's shared values (the cache is rebuilt), exactly as a
    fresh object's."""
    train1, test = data(60, 8, seed=0)
    train2, _ = data(60, 8, seed=1)
    model = mlp()
    o = dict(num_models=4, epochs=2, batch_size=16, lr=1e-2, seed=3, target_modules=["4"])
    # every object the same id, as a freed Examples' successor may get: the cache must not be keyed on it
    from daunce_fast.daunce import heads

    monkeypatch.setattr(heads, "id", lambda obj: 7, raising=False)
    count = Counter(monkeypatch)
    d = Daunce(model, workdir=tmp_path / "reused", overwrite=True, extra={"share_prefix": "always"}, **o)
    d.fit(train1)
    d.fit(train2)
    fresh = Daunce(model, workdir=tmp_path / "fresh", extra={"share_prefix": "always"}, **o)
    fresh.fit(train2)
    torch.testing.assert_close(torch.from_numpy(d.losses().copy()), torch.from_numpy(fresh.losses().copy()))
    # ... and not only thanks to the safety net (which would catch a stale cache at the first step)
    assert count.train > 0 and not count.warnings
