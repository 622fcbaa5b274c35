"""The multi-LoRA op (torch path and Triton kernels) against a float64 per-adapter reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from daunce_fast.lora.ops import multilora_linear
from daunce_fast.lora.reference import multilora_reference
from daunce_fast.lora.torch_launch import backward_torch, forward_torch
from daunce_fast.testing import assert_close_to_reference, poison

# (K, m, d_in, d_out, r): odd sizes that divide no tile, r = 1 and 128, m = 1, K = 1.
SHAPES = [(3, 5, 37, 29, 4), (1, 1, 33, 17, 1), (4, 1, 20, 9, 128), (2, 19, 16, 48, 16), (1, 3, 2049, 5, 3)]


def _inputs(K, m, d_in, d_out, r, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(K * m, d_in, generator=g).to(dtype)
    W = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(dtype)
    b = torch.randn(d_out, generator=g).to(dtype) if bias else None
    A = torch.randn(K, r, d_in, generator=g) / d_in**0.5
    B = torch.randn(K, d_out, r, generator=g) / r**0.5
    dy = torch.randn(K * m, d_out, generator=g).to(dtype)
    return x, W, b, A, B, dy


def _reference_grads(x, W, b, A, B, dy, scale, xa=None):
    leaves = [t.detach().double().requires_grad_() for t in (x, A, B)]
    xa64 = xa.detach().double().requires_grad_() if xa is not None else None
    y = multilora_reference(leaves[0], W, b, leaves[1], leaves[2], scale, xa=xa64)
    wrt = leaves + ([xa64] if xa is not None else [])
    return y.detach(), torch.autograd.grad(y, wrt, dy.double())


def _reference_grads_wrt_B(x, W, b, A, B, dy, scale):
    B64 = B.detach().double().requires_grad_()
    y = multilora_reference(x, W, b, A, B64, scale)
    return y.detach(), torch.autograd.grad(y, (B64,), dy.double())


def _check(backend, shape, dtype=torch.float32, bias=True, adapter_dtype=None):
    K, m, d_in, d_out, r = shape
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r, dtype, bias)
    if adapter_dtype is not None:
        A, B = A.to(adapter_dtype), B.to(adapter_dtype)
    x.requires_grad_()
    A.requires_grad_()
    B.requires_grad_()
    y = multilora_linear(x, W, b, A, B, 0.75, backend=backend)
    gx, gA, gB = torch.autograd.grad(y, (x, A, B), dy)
    ref, (rx, rA, rB) = _reference_grads(x, W, b, A, B, dy, 0.75)
    scale = max(d_in, d_out, m) ** 0.5  # fp32 error grows with the reduction length
    dt = "float16" if torch.float16 in (dtype, A.dtype) else "float32"
    assert y.dtype == dtype and gA.dtype == A.dtype and gx.dtype == dtype
    assert_close_to_reference(y, ref, dt, scale=scale, name=f"{backend} y {shape}")
    assert_close_to_reference(gx, rx, dt, scale=scale, name=f"{backend} dx")
    assert_close_to_reference(gA, rA, dt, scale=scale, name=f"{backend} dA")
    assert_close_to_reference(gB, rB, dt, scale=scale, name=f"{backend} dB")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_torch_path_matches_float64(shape, bias):
    _check("torch", shape, bias=bias)


def test_torch_path_mixed_dtypes_bf16_base_fp32_adapters():
    # PEFT's layout: bf16 activations and base weight, fp32 adapters; LoRA math in fp32.
    K, m, d_in, d_out, r = 2, 3, 24, 12, 4
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r, torch.bfloat16)
    y = multilora_linear(x, W, b, A, B, 2.0, backend="torch")
    assert y.dtype == torch.bfloat16
    ref = multilora_reference(x, W, b, A, B, 2.0)
    assert_close_to_reference(y, ref, "bfloat16", name="bf16 y")


def test_dropout_input_path_gradients():
    K, m, d_in, d_out, r = 2, 3, 11, 7, 2
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r)
    xa = x * torch.bernoulli(torch.full_like(x, 0.7), generator=torch.Generator().manual_seed(1)) / 0.7
    x.requires_grad_(), A.requires_grad_(), B.requires_grad_(), xa.requires_grad_()
    y = multilora_linear(x, W, b, A, B, 0.5, x_lora=xa, backend="torch")
    grads = torch.autograd.grad(y, (x, A, B, xa), dy)
    ref, rgrads = _reference_grads(x, W, b, A, B, dy, 0.5, xa=xa)
    assert_close_to_reference(y, ref, "float32", scale=4, name="y")
    for a, r_, n in zip(grads, rgrads, "x A B xa".split()):
        assert_close_to_reference(a, r_, "float32", scale=4, name=f"d{n}")


def test_backward_skips_unneeded_gradients():
    x, W, b, A, B, dy = _inputs(2, 3, 8, 6, 2)
    y, h = forward_torch(x, W, b, A, B, 1.0)
    dx, dxa, dA, dB = backward_torch(dy, x, h, W, A, B, 1.0, need_dx=False, need_dA=True, need_dB=False)
    assert dx is None and dxa is None and dB is None and dA.shape == A.shape
    # A frozen input (first layer after an embedding) gets no gradient and the graph still works.
    A.requires_grad_()
    y = multilora_linear(x, W, b, A, B, 1.0)
    (gA,) = torch.autograd.grad(y, (A,), dy)
    assert gA.shape == A.shape


def test_bad_inputs_raise_clear_errors():
    x, W, b, A, B, _ = _inputs(3, 2, 8, 6, 2)
    with pytest.raises(ValueError, match="adapter-major segments"):
        multilora_linear(x[:5], W, b, A, B, 1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        multilora_linear(x, W[:, :7], b, A, B, 1.0)
    with pytest.raises(ValueError, match="frozen"):
        multilora_linear(x, W.requires_grad_(), b, A, B, 1.0)


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_float64_fp32(shape):
    _check("triton", shape)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(3, 5, 37, 29, 4), (1, 1, 33, 17, 1)])
def test_triton_matches_float64_fp16(shape):
    _check("triton", shape, dtype=torch.float16, adapter_dtype=torch.float16)


@pytest.mark.triton
def test_triton_mixed_fp16_base_fp32_adapters_and_dropout_path():
    _check("triton", (2, 3, 24, 12, 4), dtype=torch.float16, adapter_dtype=torch.float32)
    K, m, d_in, d_out, r = 2, 3, 11, 7, 2
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r)
    xa = x * 2.0
    outs = []
    for be in ("torch", "triton"):
        leaves = [t.clone().requires_grad_() for t in (x, A, B, xa)]
        y = multilora_linear(leaves[0], W, b, leaves[1], leaves[2], 0.5, x_lora=leaves[3], backend=be)
        outs.append((y, *torch.autograd.grad(y, leaves, dy)))
    for a, r_ in zip(*outs):
        assert_close_to_reference(a, r_.double(), "float32", scale=4)


@pytest.mark.triton
def test_triton_kernels_write_every_output_element():
    # The kernels on NaN-filled outputs: every element must be overwritten.
    from daunce_fast.lora import triton_launch as tl_

    x, W, b, A, B, dy = _inputs(2, 3, 21, 13, 3)
    h = poison(torch.empty(6, 3))
    tl_._shrink(x, A, h, 3, 0.5, "ieee", A.stride(0), A.stride(2), A.stride(1))
    y = poison(torch.empty(6, 13))
    tl_._gemm_expand(
        x, W, W.stride(0), W.stride(1), b, h, B, B.stride(0), B.stride(1), B.stride(2), y, 3, 1.0, "ieee", "ieee"
    )
    dB = poison(torch.empty_like(B))
    tl_._outer(h, dy, dB, dB.stride(0), dB.stride(2), dB.stride(1), 3, 1.0, "ieee")
    # The float64 oracle: h[k] = scale * x_k @ A[k].T per adapter, y and dB = dL/dB from reference.py.
    ref_h = torch.cat([0.5 * x[k * 3 : (k + 1) * 3].double() @ A[k].double().T for k in range(2)])
    ref_y, (ref_dB,) = _reference_grads_wrt_B(x, W, b, A, B, dy, 0.5)
    assert_close_to_reference(h, ref_h, "float32", scale=4, name="h")
    assert_close_to_reference(y, ref_y, "float32", scale=4, name="y")
    assert_close_to_reference(dB, ref_dB, "float32", scale=4, name="dB")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 64, 2049, 1000, 16), (2, 1, 256, 512, 128), (1, 130, 512, 384, 1)])
def test_gpu_half_precision(shape, dtype, backend):
    K, m, d_in, d_out, r = shape
    x, W, b, A, B, dy = [t.cuda() if t is not None else None for t in _inputs(K, m, d_in, d_out, r, dtype)]
    A, B = A.to(dtype).requires_grad_(), B.to(dtype).requires_grad_()
    x.requires_grad_()
    y = multilora_linear(x, W, b, A, B, 2.0, backend=backend)
    gx, gA, gB = torch.autograd.grad(y, (x, A, B), dy)
    ref, (rx, rA, rB) = _reference_grads(x, W, b, A, B, dy, 2.0)
    # Peers' practice for bf16/fp16: rtol ~2e-2, with atol relative to the tensor's magnitude
    # (outputs and the saved h are rounded to 16 bits; accumulation is fp32).
    for a, r_, n in ((y, ref, "y"), (gx, rx, "dx"), (gA, rA, "dA"), (gB, rB, "dB")):
        assert_close_to_reference(a, r_, "bfloat16", rtol=2e-2, atol=1e-2 * float(r_.abs().max()), name=n)


@settings(max_examples=25, deadline=None)
@given(
    K=st.integers(1, 5),
    m=st.integers(1, 7),
    d_in=st.integers(1, 40),
    d_out=st.integers(1, 40),
    r=st.integers(1, 20),
    bias=st.booleans(),
    scale=st.floats(-4, 4),
)
def test_torch_path_random_shapes(K, m, d_in, d_out, r, bias, scale):
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r, bias=bias)
    leaves = [t.clone().requires_grad_() for t in (x, A, B)]
    y = multilora_linear(leaves[0], W, b, leaves[1], leaves[2], scale)
    grads = torch.autograd.grad(y, leaves, dy)
    ref, rgrads = _reference_grads(x, W, b, A, B, dy, scale)
    s = 4 * max(d_in, d_out, m, 4) ** 0.5 * max(1.0, abs(scale))
    assert_close_to_reference(y, ref, "float32", scale=s, name="y")
    for a, r_ in zip(grads, rgrads):
        assert_close_to_reference(a, r_, "float32", scale=s, name="grad")


@pytest.mark.triton
@settings(max_examples=6, deadline=None)
@given(
    K=st.integers(1, 3), m=st.integers(1, 20), d_in=st.integers(1, 40), d_out=st.integers(1, 40), r=st.integers(1, 17)
)
def test_triton_random_shapes(K, m, d_in, d_out, r):
    x, W, b, A, B, dy = _inputs(K, m, d_in, d_out, r)
    leaves = [t.clone().requires_grad_() for t in (x, A, B)]
    y = multilora_linear(leaves[0], W, b, leaves[1], leaves[2], 1.5, backend="triton")
    grads = torch.autograd.grad(y, leaves, dy)
    ref, rgrads = _reference_grads(x, W, b, A, B, dy, 1.5)
    s = 4 * max(d_in, d_out, m, 4) ** 0.5
    assert_close_to_reference(y, ref, "float32", scale=s, name="y")
    for a, r_ in zip(grads, rgrads):
        assert_close_to_reference(a, r_, "float32", scale=s, name="grad")


@pytest.mark.gpu
def test_gpu_bf16_model_with_fp32_adapters_matches_peft(tmp_path):
    # PEFT's layout on a GPU: bf16 base, fp32 adapters; both backends against PEFT's own forward.
    peft = pytest.importorskip("peft")
    import copy

    from daunce_fast import lora

    from ._models import LLAMA_TARGETS, llama

    base = llama().cuda().to(torch.bfloat16)
    ids = torch.randint(0, 64, (2, 9), device="cuda")
    for backend in ("torch", "triton"):
        model = copy.deepcopy(base)
        lora.attach(model, 2, 4, 8.0, LLAMA_TARGETS, seed=0, backend=backend)
        with torch.no_grad():
            for _, m in lora.lora_modules(model):
                assert m.lora_A.dtype == torch.float32
                m.lora_B.normal_(0, 0.1)
            ours = model(input_ids=ids).logits
        lora.save_peft(model, 1, str(tmp_path / backend))
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / backend)).eval()
        with torch.no_grad():
            theirs = pm(input_ids=ids[1:]).logits[0]
        err = (ours[1].float() - theirs.float()).abs().max().item()
        print(backend, "max abs diff vs PEFT (bf16 logits)", err)
        assert err <= 3e-2 * theirs.float().abs().max().item()
