"""The output head's two per-row primitives, defined once: torch custom ops (so torch.compile
traces them), with fake (meta) implementations and autograd, and the registration of each
backend's kernels.

  daunce_fast::loss_head_stats(h, W, b, y, backend, chunk) -> (lse_o [N], zy [N])
  daunce_fast::loss_head_grad(h, W, b, y, lse_o, go, gy, need_dh, need_dw, need_db, backend, chunk)
      -> (dh [N, d], dW [V, d], db [V]); a gradient that was not asked for comes back empty [0]

Semantics: ``row_stats`` / ``row_grad`` of :mod:`.torch_launch`; outputs in float32 (float64 for
float64 ``h``). ``loss_head_stats`` is differentiable in h, W and b: its backward calls
``loss_head_grad``, which recomputes the logits tile by tile (nothing [N, V]-sized is saved).
``backend`` is the already chosen backend (:func:`.api.pick_backend`); the kernels are looked up
in the registry, registry ops ``losses.row_stats`` and ``losses.row_grad``. ``chunk`` encodes
``chunk_size`` (custom-op schemas take no union types): ``[]`` None, ``[n]`` an element budget,
``[rows, vocab]`` an explicit tile.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._backends import kernel, register_kernel

# Preference order: the Triton kernels (CUDA) first, then the chunked torch path (any device).
for _backend in ("triton", "torch"):
    register_kernel("losses.row_stats", _backend, f"daunce_fast.losses.{_backend}_launch:row_stats")
    register_kernel("losses.row_grad", _backend, f"daunce_fast.losses.{_backend}_launch:row_grad")


def encode_chunk(chunk_size) -> list[int]:
    """chunk_size (None, int budget, or (rows, vocab)) -> the custom ops' ``chunk`` list."""
    if chunk_size is None:
        return []
    if isinstance(chunk_size, (tuple, list)):
        return [int(chunk_size[0]), int(chunk_size[1])]
    return [int(chunk_size)]


def _decode_chunk(chunk: list[int]):
    return None if not chunk else chunk[0] if len(chunk) == 1 else (chunk[0], chunk[1])


def _compute_dtype(h: Tensor) -> torch.dtype:
    return torch.float64 if h.dtype == torch.float64 else torch.float32


@torch.library.custom_op("daunce_fast::loss_head_stats", mutates_args=())
def head_stats(
    h: Tensor, W: Tensor, b: Optional[Tensor], y: Tensor, backend: str, chunk: list[int]
) -> tuple[Tensor, Tensor]:
    return kernel("losses.row_stats", backend)(h, W, b, y, chunk_size=_decode_chunk(chunk))


@head_stats.register_fake
def _head_stats_fake(h, W, b, y, backend, chunk):
    n = h.shape[0]
    return h.new_empty(n, dtype=_compute_dtype(h)), h.new_empty(n, dtype=_compute_dtype(h))


@torch.library.custom_op("daunce_fast::loss_head_grad", mutates_args=())
def head_grad(
    h: Tensor,
    W: Tensor,
    b: Optional[Tensor],
    y: Tensor,
    lse_o: Tensor,
    go: Tensor,
    gy: Tensor,
    need_dh: bool,
    need_dw: bool,
    need_db: bool,
    backend: str,
    chunk: list[int],
) -> tuple[Tensor, Tensor, Tensor]:
    dh, dW, db = kernel("losses.row_grad", backend)(
        h, W, b, y, lse_o, go, gy, need_dh=need_dh, need_dw=need_dw, need_db=need_db, chunk_size=_decode_chunk(chunk)
    )
    # Custom ops cannot return None (nor one tensor twice): a gradient not asked for comes back empty.
    e = h.new_empty(0, dtype=_compute_dtype(h))
    return (dh if dh is not None else e, dW if dW is not None else e.clone(), db if db is not None else e.clone())


@head_grad.register_fake
def _head_grad_fake(h, W, b, y, lse_o, go, gy, need_dh, need_dw, need_db, backend, chunk):
    cd = _compute_dtype(h)
    return (
        h.new_empty(h.shape if need_dh else (0,), dtype=cd),
        h.new_empty(W.shape if need_dw else (0,), dtype=cd),
        h.new_empty((W.shape[0],) if need_db else (0,), dtype=cd),
    )


def _setup_context(ctx, inputs, output):
    h, W, b, y, backend, chunk = inputs
    lse_o, _ = output
    ctx.save_for_backward(h, W, b, y, lse_o)
    ctx.backend, ctx.chunk = backend, chunk


def _backward(ctx, g_lse_o, g_zy):
    h, W, b, y, lse_o = ctx.saved_tensors
    need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_db = b is not None and ctx.needs_input_grad[2]
    if not (need_dh or need_dw or need_db):
        return None, None, None, None, None, None
    if g_lse_o is None:
        g_lse_o = torch.zeros_like(lse_o)
    if g_zy is None:
        g_zy = torch.zeros_like(lse_o)
    dh, dW, db = head_grad(
        h, W, b, y, lse_o, g_lse_o, g_zy, bool(need_dh), bool(need_dw), bool(need_db), ctx.backend, ctx.chunk
    )
    return (
        dh.to(h.dtype) if need_dh else None,
        dW.to(W.dtype) if need_dw else None,
        db.to(b.dtype) if need_db else None,
        None,
        None,
        None,
    )


head_stats.register_autograd(_backward, setup_context=_setup_context)


def row_stats(h, W, b, y, backend: str, chunk_size=None):
    """(lse_o, zy) of rows ``h [N, d]`` (see the module docstring), differentiable in h, W, b.

    ``y [N]`` int64 with ignored rows < 0. Outputs are float32 (float64 for float64 inputs).
    Nothing [N, V]-sized is saved for the backward: only h, W, b, y and lse_o.
    """
    return head_stats(h, W, b, y, backend, encode_chunk(chunk_size))


def row_grad(h, W, b, y, lse_o, go, gy, backend: str, need_dh=True, need_dw=False, need_db=False, chunk_size=None):
    """Vector-Jacobian product of :func:`row_stats` for output gradients (go, gy):
    (dh [N, d] or None, dW [V, d] or None, db [V] or None) in the compute dtype (float32/64)."""
    dh, dW, db = head_grad(
        h, W, b, y, lse_o, go, gy, bool(need_dh), bool(need_dw), bool(need_db), backend, encode_chunk(chunk_size)
    )
    return dh if need_dh else None, dW if need_dw else None, db if need_db else None
