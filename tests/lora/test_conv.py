"""MultiCopyConv (K perturbed copies of a convolution in one call) against the float64 loop
reference and against K separate nn.ConvNd modules."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast.lora.conv import MultiCopyConv
from daunce_fast.lora.conv_reference import conv_copies_reference
from daunce_fast.lora.copies import copy_class_for
from daunce_fast.testing import assert_close_to_reference

# (constructor, spatial size): odd channels, kernels 1/3/5, stride 2, padding (int, tuple, 'same',
# 'valid', reflect/circular modes), dilation 2, groups 2, with and without bias; 1d, 2d and 3d.
CASES = {
    "1d_s2_p1": (lambda: nn.Conv1d(5, 7, 3, stride=2, padding=1), (11,)),
    "1d_k5_d2_g2_nobias": (lambda: nn.Conv1d(4, 6, 5, dilation=2, groups=2, bias=False), (13,)),
    "1d_circular": (lambda: nn.Conv1d(3, 5, 3, padding=2, padding_mode="circular"), (6,)),
    "2d_k3_p1": (lambda: nn.Conv2d(3, 5, 3, padding=1), (7, 9)),
    "2d_k1": (lambda: nn.Conv2d(1, 3, 1), (8, 8)),
    "2d_same_k5_d2_nobias": (lambda: nn.Conv2d(3, 5, 5, padding="same", dilation=2, bias=False), (9, 7)),
    "2d_reflect": (lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), (6, 7)),
    "2d_s2_g2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (9, 8)),
    "3d_s2_p1": (lambda: nn.Conv3d(3, 4, 3, padding=1, stride=2), (5, 6, 5)),
    "3d_k135_nobias": (lambda: nn.Conv3d(2, 3, (1, 3, 5), padding=(0, 1, 2), bias=False), (3, 4, 6)),
}
KM = [(1, 3), (5, 1), (5, 3)]
MODES = ["full-grouped", "full-im2col", "lora"]


def _layer(case, K, mode, dtype, seed=0):
    ctor, spatial = CASES[case]
    torch.manual_seed(seed)
    base = ctor().to(dtype)
    if mode == "lora":
        layer = MultiCopyConv(base, K, 2 * base.groups, alpha=3.0, name=case, seed=seed)
        with torch.no_grad():  # B starts at zero; give it values so the LoRA branch is tested
            layer.lora_B.normal_()
    else:
        layer = MultiCopyConv(base, K, "full", name=case, backend=mode.split("-")[1])
        with torch.no_grad():
            for p in layer.adapter_parameters():
                p.normal_(std=0.3)
    return layer, spatial


def _reference(layer, x):
    if layer.full:
        return conv_copies_reference(x, layer.base, delta_weight=layer.delta_weight, delta_bias=layer.delta_bias)
    return conv_copies_reference(x, layer.base, lora_A=layer.lora_A, lora_B=layer.lora_B, scaling=layer.scaling)


def _separate_modules(layer, x):
    """K deep-copied nn.ConvNd modules with copy k's weights applied (PEFT's A/B convs for LoRA)."""
    base, K = layer.base, layer.num_adapters
    m = x.shape[0] // K
    outs = []
    for k in range(K):
        xk = x[k * m : (k + 1) * m]
        mod = copy.deepcopy(base)
        if layer.full:
            with torch.no_grad():
                mod.weight += layer.delta_weight[k].to(mod.weight.dtype)
                if layer.delta_bias is not None:
                    mod.bias += layer.delta_bias[k].to(mod.bias.dtype)
            outs.append(mod(xk))
        else:
            conv = type(base)
            r = layer.rank
            A = conv(
                base.in_channels,
                r,
                base.kernel_size,
                base.stride,
                base.padding,
                base.dilation,
                bias=False,
                dtype=xk.dtype,
            )
            A.padding_mode, A._reversed_padding_repeated_twice = (
                base.padding_mode,
                base._reversed_padding_repeated_twice,
            )
            B = conv(r, base.out_channels, 1, groups=base.groups, bias=False, dtype=xk.dtype)
            with torch.no_grad():
                A.weight.copy_(layer.lora_A[k])
                B.weight.copy_(layer.lora_B[k])
            outs.append(mod(xk) + layer.scaling * B(A(xk)))
    return torch.cat(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("K,m", KM)
@pytest.mark.parametrize("case", list(CASES))
def test_batched_copies_equal_separate_modules_forward_and_grads(case, K, m, mode, dtype):
    layer, spatial = _layer(case, K, mode, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(K * m, layer.in_channels, *spatial, generator=g).to(dtype).requires_grad_()
    y = layer(x)
    dy = torch.randn(y.shape, generator=g).to(dtype)
    params = layer.adapter_parameters()
    grads = torch.autograd.grad(y, [x, *params], dy)

    leaves = [t.detach().double().requires_grad_() for t in (x, *params)]
    names = [n for n, _ in layer.state_items()]
    kw = dict(zip(names, leaves[1:]))
    if not layer.full:
        kw["scaling"] = layer.scaling
    ref = conv_copies_reference(leaves[0], layer.base, **kw)
    ref_grads = torch.autograd.grad(ref, leaves, dy.double())

    dt = "float64" if dtype == torch.float64 else "float32"
    scale = 10.0 * (x[0].numel() ** 0.5)  # error grows with the reduction length (C_in * kernel, spatial)
    assert y.shape == ref.shape and y.dtype == dtype
    assert_close_to_reference(y, ref, dt, scale=scale, name=f"{case} {mode} y")
    for name, got, want in zip(["x", *names], grads, ref_grads):
        assert got.shape == want.shape
        assert_close_to_reference(got, want, dt, scale=scale, name=f"{case} {mode} d{name}")
    with torch.no_grad():
        sep = _separate_modules(layer, x.detach())
    assert_close_to_reference(y, sep, dt, scale=scale, name=f"{case} {mode} vs K modules")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["1d_k5_d2_g2_nobias", "2d_reflect", "2d_s2_g2", "3d_s2_p1"])
def test_copy_k_does_not_depend_on_copy_j_inputs(case, mode):
    K, m = 5, 3
    layer, spatial = _layer(case, K, mode, torch.float32)
    x = torch.randn(K * m, layer.in_channels, *spatial)
    with torch.no_grad():
        y = layer(x)
        x2 = x.clone()
        x2[2 * m : 3 * m] += torch.randn_like(x2[2 * m : 3 * m]) * 10  # copy j = 2's rows only
        y2 = layer(x2)
    for k in range(K):
        rows = slice(k * m, (k + 1) * m)
        if k == 2:
            assert not torch.equal(y[rows], y2[rows])
        else:
            assert torch.equal(y[rows], y2[rows]), f"copy {k} changed when only copy 2's input did"


@pytest.mark.parametrize("case", list(CASES))
def test_zero_adapters_equal_the_base(case):
    ctor, spatial = CASES[case]
    torch.manual_seed(0)
    base = ctor()
    x = torch.randn(6, base.in_channels, *spatial)
    with torch.no_grad():
        want = base(x)
        # LoRA starts with B = 0: the base's output bit for bit.
        lora = MultiCopyConv(base, 3, 2 * base.groups, alpha=4.0, seed=0)
        assert torch.equal(lora(x), want)
        # Full-rank copies at zero deltas run W + 0 through the grouped/im2col path: equal up to the
        # summation order of the convolution algorithm (fp32 rounding), exactly equal weights.
        for backend in ("grouped", "im2col"):
            full = MultiCopyConv(base, 3, "full", backend=backend)
            assert_close_to_reference(full(x), want.double(), "float32", scale=x[0].numel() ** 0.5)


@pytest.mark.parametrize("mode", MODES)
def test_disabled_runs_the_plain_base_on_any_batch(mode):
    layer, spatial = _layer("2d_s2_g2", 5, mode, torch.float32)
    layer.disabled = True
    x = torch.randn(7, layer.in_channels, *spatial)  # 7 rows: not a multiple of K = 5
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))


def test_bad_inputs_raise_clear_value_errors():
    layer = MultiCopyConv(nn.Conv2d(3, 4, 3), 4, "full", name="c1")
    with pytest.raises(ValueError, match="c1.*K=4 adapter-major"):
        layer(torch.randn(6, 3, 8, 8))
    with pytest.raises(ValueError, match="c1.*3 channels"):
        layer(torch.randn(8, 5, 8, 8))
    with pytest.raises(ValueError, match="c1.*batched"):
        layer(torch.randn(3, 8, 8))  # unbatched input
    with pytest.raises(ValueError, match="groups=2 needs a rank divisible by 2"):
        MultiCopyConv(nn.Conv2d(4, 4, 3, groups=2), 2, 3)
    with pytest.raises(ValueError, match="rank must be"):
        MultiCopyConv(nn.Conv2d(4, 4, 3), 2, 0)
    with pytest.raises(ValueError, match="backend"):
        MultiCopyConv(nn.Conv2d(4, 4, 3), 2, "full", backend="cuda")
    with pytest.raises(TypeError, match="nn.Conv1d/2d/3d"):
        MultiCopyConv(nn.Linear(4, 4), 2, "full")
    with pytest.raises(ValueError, match="3 adapter ids for 4 slots"):
        layer.reset_adapters([0, 1, 2])


def test_lora_init_is_deterministic_from_seed_id_and_name():
    base = nn.Conv2d(3, 5, 3)
    a = MultiCopyConv(base, 3, 4, alpha=8.0, name="features.0", seed=7, adapter_ids=[3, 7, 9])
    b = MultiCopyConv(base, 2, 4, alpha=8.0, name="features.0", seed=7, adapter_ids=[9, 3])
    other_name = MultiCopyConv(base, 1, 4, alpha=8.0, name="features.3", seed=7, adapter_ids=[3])
    other_seed = MultiCopyConv(base, 1, 4, alpha=8.0, name="features.0", seed=8, adapter_ids=[3])
    assert torch.equal(a.lora_A[0], b.lora_A[1]) and torch.equal(a.lora_A[2], b.lora_A[0])  # id 3, id 9
    assert not torch.equal(a.lora_A[0], a.lora_A[1])
    assert not torch.equal(a.lora_A[0], other_name.lora_A[0])
    assert not torch.equal(a.lora_A[0], other_seed.lora_A[0])
    assert (a.lora_B == 0).all()
    # PEFT's kaiming-uniform(a=sqrt(5)) bound on [r, C_in, kh, kw]: 1/sqrt(fan_in), fan_in = 3*3*3.
    assert a.lora_A.abs().max() <= 1 / 27**0.5 and a.lora_A.abs().max() > 0.8 / 27**0.5
    with torch.no_grad():
        a.lora_B.normal_()
    a.reset_adapters([9, 3, 1], seed=7)  # slots re-assigned: slot 0 now holds id 9
    assert torch.equal(a.lora_A[0], b.lora_A[0]) and (a.lora_B == 0).all()


def test_state_items_describe_and_registry():
    base = nn.Conv2d(3, 5, 3, groups=1)
    full = MultiCopyConv(base, 4, "full", name="c")
    assert [n for n, _ in full.state_items()] == ["delta_weight", "delta_bias"]
    assert full.delta_weight.shape == (4, 5, 3, 3, 3) and full.delta_bias.shape == (4, 5)
    assert full.kind_label() == "full"
    assert full.describe() == {
        "name": "c",
        "type": "Conv2d",
        "kind": "full",
        "params_per_copy": 5 * 3 * 9 + 5,
        "bytes_per_copy": 4 * (5 * 3 * 9 + 5),
    }
    nobias = MultiCopyConv(nn.Conv1d(3, 5, 3, bias=False), 2, "full")
    assert [n for n, _ in nobias.state_items()] == ["delta_weight"]
    lora = MultiCopyConv(nn.Conv3d(4, 6, 3, groups=2), 2, 8, alpha=16.0)
    assert [n for n, _ in lora.state_items()] == ["lora_A", "lora_B"]
    assert lora.lora_A.shape == (2, 8, 4, 3, 3, 3) and lora.lora_B.shape == (2, 6, 4, 1, 1, 1)
    assert lora.kind_label() == "lora r=8" and lora.scaling == 2.0
    # attribute reads fall through to the frozen base; its parameters are frozen
    assert full.weight is base.weight and full.kernel_size == (3, 3) and not base.weight.requires_grad
    for t in (nn.Conv1d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv3d(1, 1, 1)):
        assert copy_class_for(t) is MultiCopyConv


def test_bf16_base_keeps_fp32_adapters():
    base = nn.Conv2d(3, 5, 3, padding=1).to(torch.bfloat16)
    layer = MultiCopyConv(base, 3, "full")
    assert layer.delta_weight.dtype == torch.float32
    with torch.no_grad():
        layer.delta_weight.normal_(std=0.1)
    x = torch.randn(6, 3, 6, 6).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = conv_copies_reference(x, base, delta_weight=layer.delta_weight, delta_bias=layer.delta_bias)
    assert_close_to_reference(y, ref, "bfloat16", scale=3.0, name="bf16 full")
