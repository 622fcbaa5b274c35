"""Per-copy affine norms: one batched pass equals K separate float64 copies; BatchNorm never mixes
copies and never updates θ0's running statistics."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast import lora
from daunce_fast.lora.norm import MultiCopyNorm, make_copies_independent

from ._copies import check_against_copies

K, M = 3, 5


def _bn(cls, c):
    torch.manual_seed(1)
    bn = cls(c)
    with torch.no_grad():  # θ0 with non-trivial statistics and affine parameters
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn


CASES = {
    "layernorm": (lambda: nn.LayerNorm(7), (K * M, 3, 7)),
    "layernorm2d": (lambda: nn.LayerNorm((3, 7)), (K * M, 3, 7)),
    "layernorm_nobias": (lambda: nn.LayerNorm(7, bias=False), (K * M, 7)),
    "rmsnorm": (lambda: nn.RMSNorm(7), (K * M, 2, 7)),
    "groupnorm": (lambda: nn.GroupNorm(2, 6), (K * M, 6, 5)),
    "bn1d": (lambda: _bn(nn.BatchNorm1d, 6), (K * M, 6)),
    "bn1d_seq": (lambda: _bn(nn.BatchNorm1d, 6), (K * M, 6, 4)),
    "bn2d": (lambda: _bn(nn.BatchNorm2d, 4), (K * M, 4, 3, 5)),
    "bn3d": (lambda: _bn(nn.BatchNorm3d, 2), (K * M, 2, 3, 2, 3)),
    "bn2d_nostats": (lambda: nn.BatchNorm2d(4, track_running_stats=False), (K * M, 4, 3, 3)),
    "instancenorm": (lambda: nn.InstanceNorm2d(4, affine=True), (K * M, 4, 3, 5)),
}


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "case,batchnorm", [(c, "eval") for c in sorted(CASES)] + [(c, "batch") for c in sorted(CASES) if c.startswith("bn")]
)
def test_norm_equals_k_copies(case, batchnorm, train):
    make, shape = CASES[case]
    base = make().train(train)
    orig = copy.deepcopy(base)
    layer = MultiCopyNorm(base, K, name="", batchnorm=batchnorm)
    before = {n: b.clone() for n, b in base.named_buffers()}
    check_against_copies(orig, layer, [torch.randn(shape)], K, batchnorm=batchnorm)
    for n, b in base.named_buffers():  # θ0's running statistics never change
        assert torch.equal(b, before[n]), n
    assert layer.kind == "affine"


@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_batchnorm_copies_are_independent_in_train_mode(batchnorm):
    layer = MultiCopyNorm(_bn(nn.BatchNorm2d, 4).train(), K, batchnorm=batchnorm)
    x = torch.randn(K * M, 4, 3, 3)
    y = layer(x)
    x2 = x.clone()
    x2[M : 2 * M] += 5 * torch.randn(M, 4, 3, 3)  # only copy 1's rows change
    y2 = layer(x2)
    assert torch.equal(y[:M], y2[:M]) and torch.equal(y[2 * M :], y2[2 * M :])
    assert not torch.equal(y[M : 2 * M], y2[M : 2 * M])


def test_zero_adapters_equal_theta0_and_disabled_runs_base():
    bn = _bn(nn.BatchNorm2d, 4)
    x = torch.randn(K * M, 4, 3, 3)
    want = bn.eval()(x)
    layer = MultiCopyNorm(bn.train(), K)  # train flag: eval-mode normalisation all the same
    assert torch.equal(layer(x), want)
    with lora.adapters_disabled(layer):
        assert torch.equal(layer(x[:2]), want[:2])  # any batch size, θ0's outputs
    for base, shape in (
        (nn.LayerNorm(6), (K * 2, 6)),
        (nn.GroupNorm(2, 4), (K * 2, 4, 3)),
        (nn.InstanceNorm1d(4, affine=True), (K * 2, 4, 5)),
    ):
        with torch.no_grad():
            base.weight.normal_()
            base.bias.normal_()
        x = torch.randn(shape)
        assert torch.equal(MultiCopyNorm(copy.deepcopy(base), K)(x), base(x)), type(base).__name__


def test_bad_input_and_types():
    layer = MultiCopyNorm(nn.LayerNorm(4), 3)
    with pytest.raises(ValueError, match="K=3"):
        layer(torch.randn(4, 4))
    with pytest.raises(ValueError, match="batchnorm"):
        MultiCopyNorm(nn.BatchNorm1d(4), 3, batchnorm="mixed")
    with pytest.raises(TypeError, match="MultiCopyNorm wraps"):
        MultiCopyNorm(nn.Linear(2, 2), 3)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        _bn(nn.BatchNorm2d, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_make_copies_independent_wraps_every_batchnorm(batchnorm):
    model = _cnn()
    theta0 = copy.deepcopy(model).eval()
    lora.attach(model, K, 2, 4.0, ["7"], seed=0)  # only the head targeted
    names = make_copies_independent(model, K, batchnorm=batchnorm)
    assert names == ["1", "4"]
    assert [(r["name"], r["kind"]) for r in lora.summary(model)] == [
        ("1", f"stats (batchnorm={batchnorm})"),
        ("4", f"stats (batchnorm={batchnorm})"),
        ("7", "lora r=2"),
    ]
    before = {n: b.clone() for n, b in theta0.named_buffers()}
    model.train()
    x = torch.randn(K * M, 1, 8, 8, requires_grad=True)
    y = model(x)
    if batchnorm == "eval":  # zero B: every copy is θ0 exactly, in train mode
        assert torch.equal(y, theta0(x))
    y.square().sum().backward()
    x2 = x.detach().clone()
    x2[:M] += torch.randn(M, 1, 8, 8)
    y2 = model(x2)
    assert torch.equal(y[M:], y2[M:])  # copy 0's inputs never reach another copy
    for n, b in lora.detach(model).named_buffers():
        assert torch.equal(b, before[n]), n
    assert type(model[1]) is nn.BatchNorm2d and type(model[4]) is nn.BatchNorm2d


def test_make_copies_independent_switches_wrapped_batchnorm():
    model = _cnn()
    lora.attach(model, K, "full", 1.0, ["1"])
    assert make_copies_independent(model, K, "batch") == ["1", "4"]
    assert model[1].batchnorm == "batch" and model[1].kind == "affine"
    with pytest.raises(ValueError, match="num_adapters"):
        make_copies_independent(model, K + 1)
