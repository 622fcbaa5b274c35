"""per_example_loss and margin (torch chunked path) vs the explicit-logits float64 reference."""

import pytest
import torch

from daunce_fast.losses import margin, per_example_loss, torch_launch
from daunce_fast.losses import reference as ref
from daunce_fast.testing import assert_close_to_reference

F64 = torch.float64


def make(R, T, d, V, seed=0, dtype=F64, ignore_frac=0.2, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shape = (R, d) if T is None else (R, T, d)
    h = (torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype)
    W = (torch.randn(V, d, generator=g, dtype=F64) / d**0.5).to(dtype)
    b = torch.randn(V, generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, V, shape[:-1], generator=g)
    y = torch.where(torch.rand(shape[:-1], generator=g) < ignore_frac, torch.full_like(y, -100), y)
    return h, W, b, y


# (R, T, d, V, chunk): T=None is the classifier layout [R, d]; chunks that do not divide N or V.
SHAPES = [
    (5, 7, 6, 13, (4, 5)),
    (3, 1, 9, 10, (2, 3)),  # T = 1
    (4, None, 8, 10, None),  # classifier, single tile (direct path)
    (33, None, 16, 37, (8, 16)),  # classifier, V not a multiple of the vocab chunk
    (2, 9, 5, 50, 64),  # element budget below one row of the vocabulary x min rows
    (6, 4, 3, 2, (5, 1)),  # V = 2, one vocabulary column per tile
]


@pytest.mark.parametrize("R,T,d,V,chunk", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_loss_and_grads_match_reference(R, T, d, V, chunk, reduction, with_bias):
    h, W, b, y = make(R, T, d, V)
    b = b if with_bias else None
    args = [x.clone().requires_grad_(True) if x is not None else None for x in (h, W, b)]
    out = per_example_loss(args[0], args[1], y, bias=args[2], reduction=reduction, backend="torch", chunk_size=chunk)
    rargs = [x.clone().requires_grad_(True) if x is not None else None for x in (h, W, b)]
    rout = ref.per_example_loss(rargs[0], rargs[1], y, bias=rargs[2], reduction=reduction)
    assert out.shape == (R,) and out.dtype == F64
    assert_close_to_reference(out, rout, "float64", name="loss")
    gw = torch.randn(R, dtype=F64)
    (out * gw).sum().backward()
    (rout * gw).sum().backward()
    for a, r, name in zip(args, rargs, ("dh", "dW", "db")):
        if a is not None:
            assert_close_to_reference(a.grad, r.grad, "float64", name=name)


@pytest.mark.parametrize("R,T,d,V,chunk", SHAPES)
def test_margin_and_grads_match_reference(R, T, d, V, chunk):
    h, W, b, y = make(R, T, d, V, seed=1)
    hh = h.clone().requires_grad_(True)
    out = margin(hh, W, y, bias=b, backend="torch", chunk_size=chunk)
    hr = h.clone().requires_grad_(True)
    rout = ref.margin(hr, W, y, bias=b)
    assert_close_to_reference(out, rout, "float64", name="margin")
    out.sum().backward()
    rout.sum().backward()
    assert_close_to_reference(hh.grad, hr.grad, "float64", name="dh")


def test_float32_and_bfloat16_inputs_accumulate_in_float32():
    h, W, b, y = make(7, 6, 32, 300, seed=2)
    want = ref.per_example_loss(h, W, y, bias=b)
    got = per_example_loss(h.float(), W.float(), y, bias=b.float(), backend="torch", chunk_size=(4, 64))
    assert got.dtype == torch.float32
    assert_close_to_reference(got, want, "float32", scale=10, name="fp32")
    hb, Wb, bb = h.bfloat16(), W.bfloat16(), b.bfloat16()
    got = per_example_loss(hb, Wb, y, bias=bb, backend="torch", chunk_size=(4, 64))
    assert got.dtype == torch.float32
    # against the float64 loss of the bf16-rounded inputs: only accumulation error remains
    want = ref.per_example_loss(hb.double(), Wb.double(), y, bias=bb.double())
    assert_close_to_reference(got, want, "float32", scale=10, name="bf16 inputs")


def test_one_class_dominating_does_not_overflow():
    h, W, b, y = make(6, 3, 4, 9, seed=3, ignore_frac=0.0)
    b = torch.zeros(9, dtype=F64)
    b[2] = 1e4  # logits ~ 1e4 on class 2
    y[0, :] = 2  # correct and dominant: loss ~ 0
    for dtype in (F64, torch.float32):
        hh = h.detach().to(dtype).clone().requires_grad_(True)
        out = per_example_loss(hh, W.to(dtype), y, bias=b.to(dtype), backend="torch", chunk_size=(4, 4))
        mg = margin(h.to(dtype), W.to(dtype), y, bias=b.to(dtype), backend="torch", chunk_size=(4, 4))
        want = ref.per_example_loss(h, W, y, bias=b)
        assert torch.isfinite(out).all() and torch.isfinite(mg).all()
        assert_close_to_reference(out, want, dtype, name=f"dominant {dtype}")
        assert_close_to_reference(mg, ref.margin(h, W, y, bias=b), dtype, name=f"margin dominant {dtype}")
        out.sum().backward()
        assert torch.isfinite(hh.grad).all()
    assert float(out[0].detach()) < 1e-30


def test_example_without_valid_tokens_gives_zero_and_no_grad():
    h, W, b, y = make(4, 5, 6, 7, seed=4, ignore_frac=0.0)
    y[1] = -7  # ignore_index is configurable: -7 marks padding here
    y[3, 2] = -7
    hh = h.clone().requires_grad_(True)
    out = per_example_loss(hh, W, y, bias=b, ignore_index=-7, backend="torch", chunk_size=(3, 4))
    assert float(out[1].detach()) == 0.0
    assert_close_to_reference(out, ref.per_example_loss(h, W, y, bias=b, ignore_index=-7), "float64")
    out.sum().backward()
    assert float(hh.grad[1].abs().max()) == 0.0
    assert float(hh.grad[3, 2].abs().max()) == 0.0
    mg = margin(h, W, y, bias=b, ignore_index=-7, backend="torch")
    assert float(mg[1]) == 0.0
    assert_close_to_reference(mg, ref.margin(h, W, y, bias=b, ignore_index=-7), "float64")


def test_bad_inputs_raise_clear_errors():
    h, W, b, y = make(3, 4, 5, 6, ignore_frac=0.0)
    y_bad = y.clone()
    y_bad[0, 0] = 6
    with pytest.raises(ValueError, match="outside"):
        per_example_loss(h, W, y_bad, backend="torch")
    with pytest.raises(ValueError, match="labels must have shape"):
        per_example_loss(h, W, y[:, :3], backend="torch")
    with pytest.raises(ValueError, match="weight is"):
        per_example_loss(h, W[:, :4], y, backend="torch")
    with pytest.raises(ValueError, match="bias"):
        per_example_loss(h, W, y, bias=b[:5], backend="torch")
    with pytest.raises(TypeError, match="integer"):
        per_example_loss(h, W, y.double(), backend="torch")
    with pytest.raises(ValueError, match="reduction"):
        per_example_loss(h, W, y, reduction="none", backend="torch")


def test_non_contiguous_hidden():
    h, W, b, y = make(4, 6, 5, 9, seed=5)
    ht = h.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not ht.is_contiguous()
    assert_close_to_reference(
        per_example_loss(ht, W, y, bias=b, backend="torch", chunk_size=(5, 4)),
        ref.per_example_loss(h, W, y, bias=b),
        "float64",
    )


def test_row_primitives_write_every_row():
    """row_stats covers ignored rows too (lse over the whole vocabulary), so nothing is left unwritten."""
    h, W, b, y = make(11, None, 5, 12, seed=6, ignore_frac=0.4)
    ys = torch.where(y == -100, torch.full_like(y, -1), y)
    lse_o, zy = torch_launch.row_stats(h, W, b, ys, chunk_size=(3, 5))
    z = ref.logits(h, W, b)
    valid = ys >= 0
    zo = z.clone()
    zo[valid, ys[valid]] = float("-inf")
    assert_close_to_reference(lse_o, torch.logsumexp(zo, 1), "float64", name="lse_o")
    assert_close_to_reference(zy[valid], z[valid, ys[valid]], "float64", name="zy")
    assert (zy[~valid] == 0).all()


@pytest.mark.parametrize(
    "n,v,chunk,expect",
    [
        (100, 10, None, (100, 10)),  # tiny problem: one tile, direct
        (4096, 32000, None, (1024, 2048)),  # tall tiles, vocabulary chunked
        (16, 1 << 20, None, (16, 131072)),  # few rows: wide tiles
        (1 << 20, 10, None, (209715, 10)),  # tiny vocabulary, many rows
        (10, 10, (3, 4), (3, 4)),
    ],
)
def test_tile_shape(n, v, chunk, expect):
    assert torch_launch.tile_shape(n, v, chunk) == expect
