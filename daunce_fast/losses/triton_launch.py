"""Launchers of the Triton output-head kernels (imported lazily; see triton_kernels.py).

Same signatures and semantics as :func:`daunce_fast.losses.torch_launch.row_stats` / ``row_grad``.
``chunk_size`` is accepted for signature parity; on this path the tile sizes are the kernels'
BLOCK_* (under TRITON_INTERPRET=1 the smallest legal tiles, so tests stay fast).
"""

from __future__ import annotations

import torch
import triton

from .._backends import triton_interpret
from . import triton_kernels as K

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _blocks(dtype, d):
    if triton_interpret():
        return 16, 16, 16, 1
    bd = 64 if d >= 64 else max(16, 1 << (max(d, 1) - 1).bit_length())
    if dtype == torch.float32:
        return 32, 64, min(bd, 32), 4
    return 64, 128, bd, 8


def _meta(h, b, bm, bv, bd, warps) -> dict:
    """The constexpr arguments and launch options every kernel of the head takes."""
    return dict(
        HAS_BIAS=b is not None,
        IEEE=h.dtype == torch.float32,
        BLOCK_M=bm,
        BLOCK_V=bv,
        BLOCK_D=bd,
        num_warps=warps,
    )


def _prep(h, W, b, y):
    if h.dtype not in _DTYPES:
        raise TypeError(
            f"triton loss head: hidden dtype {h.dtype} not supported (float32, float16, bfloat16); "
            "use backend='torch' for float64"
        )
    if W.dtype != h.dtype:
        W = W.to(h.dtype)
    h = h.contiguous()
    W = W.contiguous()
    if b is not None:
        b = b.contiguous()
    y = y.contiguous()
    if y.dtype != torch.int64:
        y = y.to(torch.int64)
    return h, W, b, y


def row_stats(h, W, b, y, chunk_size=None):
    h, W, b, y = _prep(h, W, b, y)
    n, d = h.shape
    v = W.shape[0]
    lse_o = torch.empty(n, dtype=torch.float32, device=h.device)
    zy = torch.empty(n, dtype=torch.float32, device=h.device)
    if n == 0:
        return lse_o, zy
    bm, bv, bd, warps = _blocks(h.dtype, d)
    grid = (triton.cdiv(n, bm),)
    K.row_stats_kernel[grid](
        h,
        W,
        b if b is not None else h,
        y,
        lse_o,
        zy,
        n,
        v,
        d,
        h.stride(0),
        W.stride(0),
        **_meta(h, b, bm, bv, bd, warps),
    )
    return lse_o, zy


def row_grad(h, W, b, y, lse_o, go, gy, need_dh=True, need_dw=False, need_db=False, chunk_size=None):
    h, W, b, y = _prep(h, W, b, y)
    n, d = h.shape
    v = W.shape[0]
    lse_o = lse_o.to(torch.float32).contiguous()
    go = go.to(torch.float32).contiguous()
    gy = gy.to(torch.float32).contiguous()
    bm, bv, bd, warps = _blocks(h.dtype, d)
    rows = (h, W, b if b is not None else h, y, lse_o, go, gy)  # what both kernels read
    meta = _meta(h, b, bm, bv, bd, warps)
    dh = dW = db = None
    if need_dh:
        dh = torch.zeros(n, d, dtype=torch.float32, device=h.device)
        if n:
            K.row_grad_dh_kernel[(triton.cdiv(n, bm),)](
                *rows, dh, n, v, d, h.stride(0), W.stride(0), dh.stride(0), **meta
            )
    if need_dw or need_db:
        dW = torch.zeros(v, d, dtype=torch.float32, device=h.device) if need_dw else None
        db = torch.zeros(v, dtype=torch.float32, device=h.device) if need_db else None
        K.row_grad_dw_kernel[(triton.cdiv(v, bv),)](
            *rows,
            dW if dW is not None else lse_o,
            db if db is not None else lse_o,
            n,
            v,
            d,
            h.stride(0),
            W.stride(0),
            d,
            NEED_DW=need_dw,
            NEED_DB=need_db,
            **meta,
        )
    return dh, dW, db
