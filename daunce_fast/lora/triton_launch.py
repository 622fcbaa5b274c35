"""Launchers of the Triton multi-LoRA kernels (this module imports triton: import it lazily).

``forward_triton`` / ``backward_triton`` have the signatures and semantics of
``torch_launch.forward_torch`` / ``torch_launch.backward_torch``.
"""

from __future__ import annotations

import torch
import triton

from .._backends import triton_interpret
from . import triton_kernels as kern


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _r_pad(r: int) -> int:
    return max(16, _pow2(r))


def _prec(dtype: torch.dtype, device: torch.device) -> str:
    # fp32 tl.dot is TF32 on a GPU unless told otherwise; follow torch's own matmul setting.
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _blocks(m: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    if triton_interpret():  # few, small programs: the interpreter costs ~0.6 ms per program
        return min(32, max(16, _pow2(m))), 32, 32, 1, 1
    bm = min(64, max(16, _pow2(m)))
    bk = 32 if dtype == torch.float32 else 64
    return bm, 128, bk, 4 if bm <= 32 else 8, 3


def _shrink(X, M, out, m, scale, prec, smk, smd, smr):
    N, D = X.shape
    R = out.shape[1]
    bm, _, bk, warps, stages = _blocks(m, X.dtype)
    tiles = triton.cdiv(m, bm)
    K = N // m
    kern._seg_shrink[(K * tiles,)](
        X,
        M,
        out,
        m,
        D,
        R,
        tiles,
        X.stride(0),
        X.stride(1),
        smk,
        smd,
        smr,
        out.stride(0),
        out.stride(1),
        float(scale),
        BLOCK_M=bm,
        BLOCK_D=bk,
        R_PAD=_r_pad(R),
        PREC=prec,
        num_warps=warps,
        num_stages=stages,
    )


def _gemm_expand(X, Wm, swj, swd, bias, H, E, sek, sej, ser, out, m, scale, prec_base, prec_lora):
    N, D = X.shape
    n_out = out.shape[1]
    R = H.shape[1]
    bm, bn, bk, warps, stages = _blocks(m, X.dtype)
    tiles = triton.cdiv(m, bm)
    K = N // m
    grid = (K * tiles, triton.cdiv(n_out, bn))
    kern._gemm_expand[grid](
        X,
        Wm,
        bias if bias is not None else out,
        H,
        E,
        out,
        m,
        n_out,
        D,
        R,
        tiles,
        X.stride(0),
        X.stride(1),
        swj,
        swd,
        H.stride(0),
        H.stride(1),
        sek,
        sej,
        ser,
        out.stride(0),
        out.stride(1),
        float(scale),
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        R_PAD=_r_pad(R),
        PREC_BASE=prec_base,
        PREC_LORA=prec_lora,
        num_warps=warps,
        num_stages=stages,
    )


def _outer(P, Q, out, sok, sor, sod, m, scale, prec):
    N, D = Q.shape
    R = P.shape[1]
    K = N // m
    if triton_interpret():
        bm, bd, warps, stages = min(64, max(16, _pow2(m))), 32, 1, 1
    else:
        bm, bd, warps, stages = 32 if Q.dtype == torch.float32 else 64, 128, 4, 3
    grid = (K, triton.cdiv(D, bd))
    kern._seg_outer[grid](
        P,
        Q,
        out,
        m,
        D,
        R,
        P.stride(0),
        P.stride(1),
        Q.stride(0),
        Q.stride(1),
        sok,
        sor,
        sod,
        float(scale),
        BLOCK_M=bm,
        BLOCK_D=bd,
        R_PAD=_r_pad(R),
        PREC=prec,
        num_warps=warps,
        num_stages=stages,
    )


def forward_triton(x, weight, bias, A, B, scale: float, xa=None):
    K, r, d_in = A.shape
    N = x.shape[0]
    m = N // K
    d_out = weight.shape[0]
    src = x if xa is None else xa
    h = torch.empty((N, r), device=x.device, dtype=A.dtype)
    y = torch.empty((N, d_out), device=x.device, dtype=x.dtype)
    if N == 0:
        return y, h
    pl = _prec(A.dtype, x.device)
    # h[n, c] = scale * sum_j xa[n, j] * A[k, c, j]
    _shrink(src, A, h, m, scale, pl, A.stride(0), A.stride(2), A.stride(1))
    # y[n, j] = sum_i x[n, i] W[j, i] + bias[j] + sum_c h[n, c] B[k, j, c]
    _gemm_expand(
        x,
        weight,
        weight.stride(0),
        weight.stride(1),
        bias,
        h,
        B,
        B.stride(0),
        B.stride(1),
        B.stride(2),
        y,
        m,
        1.0,
        _prec(x.dtype, x.device),
        pl,
    )
    return y, h


def backward_triton(
    dy, x, h, weight, A, B, scale: float, xa=None, need_dx=True, need_dxa=False, need_dA=True, need_dB=True
):
    K, r, d_in = A.shape
    N, d_out = dy.shape
    m = N // K
    src = x if xa is None else xa
    pl = _prec(A.dtype, dy.device)
    dx = dxa = dA = dB = None
    g = None
    if need_dA or need_dx or need_dxa:
        # g[n, c] = scale * sum_j dy[n, j] * B[k, j, c]
        g = torch.empty((N, r), device=dy.device, dtype=A.dtype)
        if N:
            _shrink(dy, B, g, m, scale, pl, B.stride(0), B.stride(1), B.stride(2))
    if need_dB:
        # dB[k, j, c] = sum_i h[i, c] * dy[i, j]   (h holds the scale)
        dB = torch.empty_like(B, memory_format=torch.contiguous_format)
        if N:
            _outer(h, dy, dB, dB.stride(0), dB.stride(2), dB.stride(1), m, 1.0, pl)
        else:
            dB.zero_()
    if need_dA:
        # dA[k, c, j] = sum_i g[i, c] * xa[i, j]
        dA = torch.empty_like(A, memory_format=torch.contiguous_format)
        if N:
            _outer(g, src, dA, dA.stride(0), dA.stride(1), dA.stride(2), m, 1.0, pl)
        else:
            dA.zero_()
    if need_dx:
        # dx[n, i] = sum_j dy[n, j] W[j, i] (+ sum_c g[n, c] A[k, c, i] when the LoRA input is x)
        dx = torch.empty((N, d_in), device=dy.device, dtype=x.dtype)
        if N:
            if xa is None:
                _gemm_expand(
                    dy,
                    weight,
                    weight.stride(1),
                    weight.stride(0),
                    None,
                    g,
                    A,
                    A.stride(0),
                    A.stride(2),
                    A.stride(1),
                    dx,
                    m,
                    1.0,
                    _prec(dy.dtype, dy.device),
                    pl,
                )
            else:  # dropout: the LoRA input is another tensor, so dx is the plain frozen GEMM
                torch.mm(dy, weight, out=dx)
    if need_dxa and xa is not None:
        dxa = torch.bmm(g.view(K, m, r), A).view(N, d_in).to(xa.dtype)
    return dx, dxa, dA, dB
