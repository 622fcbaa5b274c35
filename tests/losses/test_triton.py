"""Triton kernels of the loss head vs the float64 explicit reference.

Without a GPU they run under TRITON_INTERPRET=1 (set by tests/conftest.py): fp32 / fp16 on tiny
grids (16 x 16 x 16 tiles). The gpu-marked tests run bf16 and larger shapes on a CUDA device.
"""

import pytest
import torch

from daunce_fast.losses import daunce_objective, margin, per_example_loss
from daunce_fast.losses import reference as ref
from daunce_fast.testing import assert_close_to_reference

pytestmark = pytest.mark.triton
F64 = torch.float64
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make(R, T, d, V, seed=0, dtype=torch.float32, ignore_frac=0.25):
    g = torch.Generator().manual_seed(seed)
    shape = (R, d) if T is None else (R, T, d)
    h = torch.randn(shape, generator=g, dtype=F64).to(dtype)
    W = (torch.randn(V, d, generator=g, dtype=F64) / d**0.5).to(dtype)
    b = torch.randn(V, generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, V, shape[:-1], generator=g)
    y = torch.where(torch.rand(shape[:-1], generator=g) < ignore_frac, torch.full_like(y, -100), y)
    return h, W, b, y


def _grads(fn, tensors, w):
    ts = [t.detach().clone().to(DEV).requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*ts)
    (out * w.to(out.device, out.dtype)).sum().backward()
    return out, [t.grad if t is not None else None for t in ts]


@pytest.mark.parametrize(
    "R,T,d,V,with_bias",
    [
        (5, 3, 20, 37, True),  # d, V not multiples of 16; two row programs
        (19, None, 8, 10, False),  # classifier, d and V below one tile
        (2, 1, 16, 16, True),  # exact single tiles, T = 1
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_loss_and_grads(R, T, d, V, with_bias, dtype):
    h, W, b, y = make(R, T, d, V, dtype=dtype)
    b = b if with_bias else None
    y = y.to(DEV)
    w = torch.randn(R, dtype=F64)
    out, grads = _grads(lambda h_, W_, b_: per_example_loss(h_, W_, y, bias=b_, backend="triton"), (h, W, b), w)
    h64, W64, b64 = (t.double() if t is not None else None for t in (h, W, b))
    rout, rgrads = _grads(lambda h_, W_, b_: ref.per_example_loss(h_, W_, y, bias=b_), (h64, W64, b64), w)
    assert out.dtype == torch.float32
    tol = "float32" if dtype == torch.float32 else "float16"
    assert_close_to_reference(out, rout, tol, scale=4, name="loss")
    for g, r, name in zip(grads, rgrads, ("dh", "dW", "db")):
        if g is not None:
            assert g.dtype == dtype
            assert_close_to_reference(g, r, tol, scale=4, name=name)


def test_margin_and_dominant_class():
    h, W, b, y = make(6, 4, 12, 21, seed=1)
    b = torch.zeros(21)
    b[5] = 1e4
    y[0] = 5
    y, hd = y.to(DEV), h.clone().to(DEV).requires_grad_(True)
    out = per_example_loss(hd, W.to(DEV), y, bias=b.to(DEV), backend="triton")
    mg = margin(h.to(DEV), W.to(DEV), y, bias=b.to(DEV), backend="triton")
    assert torch.isfinite(out).all() and torch.isfinite(mg).all()
    assert_close_to_reference(out, ref.per_example_loss(h.double(), W.double(), y.cpu(), bias=b.double()), "float32")
    assert_close_to_reference(mg, ref.margin(h.double(), W.double(), y.cpu(), bias=b.double()), "float32")
    out.sum().backward()
    assert torch.isfinite(hd.grad).all()


@pytest.mark.parametrize("obj", ["if", "efim", "margin", "blackbox"])
def test_objectives_on_triton(obj):
    K, m, T, d, V = 2, 3, 4, 16, 20
    g = torch.Generator().manual_seed(2)
    h0 = torch.randn(m, T, d, generator=g)
    h = h0.repeat(K, 1, 1) + 0.3 * torch.randn(K * m, T, d, generator=g)
    W = torch.randn(V, d, generator=g) / 4
    y = torch.randint(0, V, (m, T), generator=g)
    y[1, 0] = -100
    c = 2 * torch.rand(K, m, generator=g)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    hh = h.clone().to(DEV).requires_grad_(True)
    o, l = daunce_objective(
        hh,
        h0.to(DEV),
        W.to(DEV),
        y.to(DEV),
        c.to(DEV),
        objective=obj,
        num_adapters=K,
        mask=mask.to(DEV),
        backend="triton",
    )
    hr = h.double().requires_grad_(True)
    ro, rl = ref.daunce_objective(hr, h0.double(), W.double(), y, c.double(), objective=obj, num_adapters=K, mask=mask)
    assert_close_to_reference(o, ro, "float32", scale=10, name=obj)
    assert_close_to_reference(l, rl, "float32", scale=10, name=obj)
    o.sum().backward()
    ro.sum().backward()
    assert_close_to_reference(hh.grad, hr.grad, "float32", scale=10, name=f"{obj} dh")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_larger_shapes(dtype):
    R, T, d, V = 8, 100, 200, 5003
    h, W, b, y = make(R, T, d, V, seed=3, dtype=dtype)
    w = torch.randn(R, dtype=F64)
    out, grads = _grads(lambda h_, W_, b_: per_example_loss(h_, W_, y.to(DEV), bias=b_, backend="triton"), (h, W, b), w)
    rout, rgrads = _grads(
        lambda h_, W_, b_: per_example_loss(h_, W_, y.to(DEV), bias=b_, backend="torch"),
        (h.double(), W.double(), b.double()),
        w,
    )
    tol = "float32" if dtype == torch.float32 else "bfloat16"
    assert_close_to_reference(out, rout, tol, scale=4, name="loss")
    for g, r, name in zip(grads, rgrads, ("dh", "dW", "db")):
        assert_close_to_reference(g, r, tol, scale=4 if dtype == torch.float32 else 2, name=name)
