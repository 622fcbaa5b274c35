"""The batched multi-LoRA linear, defined once: torch custom ops (so torch.compile traces it),
with fake (meta) implementations and autograd, and the registration of each backend's kernels.

``daunce_fast::multilora_fwd`` and ``daunce_fast::multilora_bwd`` pick a backend per call through
the registry (:func:`daunce_fast._backends.dispatch`): ``torch`` (``torch_launch.py``, any device)
or ``triton`` (``triton_launch.py``, imported on first use). Registry ops ``multilora_linear``
(forward kernels) and ``multilora_linear.backward`` (their gradients) register the same backends
in the same order.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._backends import dispatch, register_kernel

# Preference order. The torch path (cuBLAS GEMMs + batched bmm, with the frozen GEMM accumulating
# into the low-rank output) comes first on CUDA as well, because the Triton kernels have only run
# under the interpreter so far; pass backend="triton" (or DAUNCE_FAST_BACKEND=triton) to use them,
# and swap this order once bench/ops/bench_multilora.py has timed them on a GPU.
for _backend in ("torch", "triton"):
    register_kernel("multilora_linear", _backend, f"daunce_fast.lora.{_backend}_launch:forward_{_backend}")
    register_kernel("multilora_linear.backward", _backend, f"daunce_fast.lora.{_backend}_launch:backward_{_backend}")


@torch.library.custom_op("daunce_fast::multilora_fwd", mutates_args=())
def _fwd(
    x: Tensor,
    xa: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    A: Tensor,
    B: Tensor,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    _, fwd = dispatch("multilora_linear", x.device.type, backend or None)
    return fwd(x, weight, bias, A, B, scale, xa)


@_fwd.register_fake
def _fwd_fake(x, xa, weight, bias, A, B, scale, backend):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], A.shape[1]), dtype=A.dtype)


@torch.library.custom_op("daunce_fast::multilora_bwd", mutates_args=())
def _bwd(
    dy: Tensor,
    x: Tensor,
    xa: Optional[Tensor],
    h: Tensor,
    weight: Tensor,
    A: Tensor,
    B: Tensor,
    scale: float,
    need_dx: bool,
    need_dxa: bool,
    need_dA: bool,
    need_dB: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _, bwd = dispatch("multilora_linear.backward", dy.device.type, backend or None)
    dx, dxa, dA, dB = bwd(dy, x, h, weight, A, B, scale, xa, need_dx, need_dxa, need_dA, need_dB)
    # Custom ops cannot return None: a gradient that was not asked for comes back empty.
    e = dy.new_empty(0)
    return (
        dx if dx is not None else e,
        dxa if dxa is not None else e.clone(),
        dA if dA is not None else e.new_empty(0, dtype=A.dtype),
        dB if dB is not None else e.new_empty(0, dtype=A.dtype),
    )


@_bwd.register_fake
def _bwd_fake(dy, x, xa, h, weight, A, B, scale, need_dx, need_dxa, need_dA, need_dB, backend):
    e = dy.new_empty(0)
    return (
        x.new_empty(x.shape) if need_dx else e,
        xa.new_empty(xa.shape) if (need_dxa and xa is not None) else e.clone(),
        A.new_empty(A.shape) if need_dA else e.new_empty(0, dtype=A.dtype),
        B.new_empty(B.shape) if need_dB else e.new_empty(0, dtype=A.dtype),
    )


def _setup_context(ctx, inputs, output):
    x, xa, weight, bias, A, B, scale, backend = inputs
    _, h = output
    ctx.save_for_backward(x, xa, h, weight, A, B)
    ctx.scale, ctx.backend = scale, backend
    ctx.mark_non_differentiable(h)
    ctx.set_materialize_grads(False)  # h's gradient is never used: do not fill zeros for it


def _backward(ctx, dy, _dh):
    x, xa, h, weight, A, B = ctx.saved_tensors
    if dy is None:  # y took no part in the loss
        return (None,) * 8
    nx, nxa, _nw, _nb, nA, nB = ctx.needs_input_grad[:6]
    dx, dxa, dA, dB = _bwd(
        dy.contiguous(),
        x,
        xa,
        h,
        weight,
        A,
        B,
        ctx.scale,
        bool(nx),
        bool(nxa and xa is not None),
        bool(nA),
        bool(nB),
        ctx.backend,
    )
    return (
        dx if nx else None,
        dxa if (nxa and xa is not None) else None,
        None,
        None,
        dA if nA else None,
        dB if nB else None,
        None,
        None,
    )


_fwd.register_autograd(_backward, setup_context=_setup_context)


def multilora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    A: Tensor,
    B: Tensor,
    scale: float,
    x_lora: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Batched multi-LoRA linear over adapter-major rows.

    ``x [K*m, d_in]``, ``weight [d_out, d_in]`` (frozen, any strides), ``bias [d_out]`` or None,
    ``A [K, r, d_in]``, ``B [K, d_out, r]``; ``x_lora`` (same shape as x, e.g. ``dropout(x)``) is
    the LoRA branch's input, default ``x``. Returns ``[K*m, d_out]`` in x's dtype::

        y[k*m:(k+1)*m] = x_k @ weight.T + bias + scale * (x_lora_k @ A[k].T) @ B[k].T

    Gradients flow to x, x_lora, A and B; never to weight or bias (they must not require grad).
    ``backend``: None (auto: the torch path; see the registration order above), 'torch' or 'triton'.
    """
    if x.dim() != 2 or A.dim() != 3 or B.dim() != 3 or weight.dim() != 2:
        raise ValueError(
            f"multilora_linear: want x [N, d_in], weight [d_out, d_in], A [K, r, d_in], B [K, d_out, r]; "
            f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    K, r, d_in = A.shape
    d_out = weight.shape[0]
    if weight.shape[1] != d_in or x.shape[1] != d_in or B.shape != (K, d_out, r):
        raise ValueError(
            f"multilora_linear: shape mismatch: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    if K == 0 or x.shape[0] % K:
        raise ValueError(f"multilora_linear: {x.shape[0]} rows are not K={K} equal adapter-major segments")
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        raise ValueError("multilora_linear: the base weight and bias are frozen (no dW); set requires_grad=False")
    if B.dtype != A.dtype:
        raise ValueError(f"multilora_linear: A and B must share a dtype, got {A.dtype} and {B.dtype}")
    if x_lora is not None and x_lora.shape != x.shape:
        raise ValueError(f"multilora_linear: x_lora {tuple(x_lora.shape)} must match x {tuple(x.shape)}")
    x = x.contiguous()
    x_lora = x_lora.contiguous() if x_lora is not None else None
    y, _ = _fwd(x, x_lora, weight, bias, A.contiguous(), B.contiguous(), float(scale), backend or "")
    return y
