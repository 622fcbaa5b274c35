"""Triton kernels of the output head (imported lazily: importing this module imports triton).

Same two primitives as :mod:`daunce_fast.losses.torch_launch`, fused so that no logits tile ever
leaves registers:

- ``row_stats_kernel``: one program per BLOCK_M rows; loops over the vocabulary in BLOCK_V
  tiles (each tile's logits = sum over BLOCK_D slices of tl.dot), keeps an online max / sum of
  exp over v != y, and picks z_y. Writes lse_o [N] and zy [N] (fp32).
- ``row_grad_dh_kernel``: one program per BLOCK_M rows; recomputes each logits tile, forms
  dz = go * exp(z - lse_o) (dz[y] = gy) and adds dz @ W[tile] into its own rows of an fp32 dh
  (no other program writes them: no atomics).
- ``row_grad_dw_kernel``: one program per BLOCK_V vocabulary rows; loops over all row blocks,
  recomputes dz and adds dz.T @ h into its own rows of fp32 dW (and db).

Inputs fp32, fp16 or bf16 (h and W the same dtype), fp32 accumulation. fp32 products use
input_precision="ieee" (TF32 would cost ~1e-3 relative error on the logits).
Offsets are int64: N*d and V*d can exceed 2**31.
"""

import triton
import triton.language as tl


@triton.jit
def _dot_acc(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b, exact fp32 products when IEEE (else the backend's default, TF32 on GPUs)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _logits_tile(
    H,
    W,
    B,
    rows,
    rmask,
    cols,
    cmask,
    D,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dk = d0 + tl.arange(0, BLOCK_D)
        dmask = dk < D
        h = tl.load(H + rows[:, None] * stride_h + dk[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + dk[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = _dot_acc(h, tl.trans(w), acc, IEEE)
    if HAS_BIAS:
        bias = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    return acc


@triton.jit
def row_stats_kernel(
    H,
    W,
    B,
    Y,
    LSE_O,
    ZY,
    N,
    V,
    D,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    y = tl.load(Y + rows, mask=rmask, other=-1)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    zy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = cols < V
        z = _logits_tile(
            H, W, B, rows, rmask, cols, cmask, D, stride_h, stride_w, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_D
        )
        is_y = cols[None, :] == y[:, None]
        zy += tl.sum(tl.where(is_y, z, 0.0), axis=1)
        z = tl.where(is_y, float("-inf"), z)
        z = tl.where(cmask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        # rows whose tiles were all masked so far keep m = -inf; shift by 0 there to avoid inf - inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_i = s_i * tl.exp(m_i - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        m_i = m_new
    lse_o = tl.where(s_i > 0, m_i + tl.log(s_i), float("-inf"))
    tl.store(LSE_O + rows, lse_o, mask=rmask)
    tl.store(ZY + rows, zy, mask=rmask)


@triton.jit
def _dz_tile(z, y, cols, cmask, lse_o, go, gy):
    # z_v <= lse_o for every v != y; the clamp only matters at the label column (overwritten
    # below), where exp could overflow to inf and inf * 0 would make NaN.
    dz = tl.exp(tl.minimum(z - lse_o[:, None], 0.0)) * go[:, None]
    dz = tl.where(cols[None, :] == y[:, None], gy[:, None], dz)
    return tl.where(cmask[None, :], dz, 0.0)


@triton.jit
def row_grad_dh_kernel(
    H,
    W,
    B,
    Y,
    LSE_O,
    GO,
    GY,
    DH,
    N,
    V,
    D,
    stride_h,
    stride_w,
    stride_dh,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    y = tl.load(Y + rows, mask=rmask, other=-1)
    lse_o = tl.load(LSE_O + rows, mask=rmask, other=0.0)
    go = tl.load(GO + rows, mask=rmask, other=0.0)
    gy = tl.load(GY + rows, mask=rmask, other=0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = cols < V
        z = _logits_tile(
            H, W, B, rows, rmask, cols, cmask, D, stride_h, stride_w, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_D
        )
        dz = _dz_tile(z, y, cols, cmask, lse_o, go, gy).to(W.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            dk = d0 + tl.arange(0, BLOCK_D)
            dmask = dk < D
            w = tl.load(W + cols[:, None] * stride_w + dk[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            ptr = DH + rows[:, None] * stride_dh + dk[None, :]
            omask = rmask[:, None] & dmask[None, :]
            acc = tl.load(ptr, mask=omask, other=0.0)
            acc = _dot_acc(dz, w, acc, IEEE)
            tl.store(ptr, acc, mask=omask)


@triton.jit
def row_grad_dw_kernel(
    H,
    W,
    B,
    Y,
    LSE_O,
    GO,
    GY,
    DW,
    DB,
    N,
    V,
    D,
    stride_h,
    stride_w,
    stride_dw,
    HAS_BIAS: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < V
    db = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M).to(tl.int64)
        rmask = rows < N
        y = tl.load(Y + rows, mask=rmask, other=-1)
        lse_o = tl.load(LSE_O + rows, mask=rmask, other=0.0)
        go = tl.load(GO + rows, mask=rmask, other=0.0)
        gy = tl.load(GY + rows, mask=rmask, other=0.0)
        z = _logits_tile(
            H, W, B, rows, rmask, cols, cmask, D, stride_h, stride_w, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_D
        )
        dz = _dz_tile(z, y, cols, cmask, lse_o, go, gy)
        dz = tl.where(rmask[:, None], dz, 0.0)
        if NEED_DB:
            db += tl.sum(dz, axis=0)
        if NEED_DW:
            dzt = tl.trans(dz.to(H.dtype.element_ty))
            for d0 in range(0, D, BLOCK_D):
                dk = d0 + tl.arange(0, BLOCK_D)
                dmask = dk < D
                h = tl.load(H + rows[:, None] * stride_h + dk[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
                ptr = DW + cols[:, None] * stride_dw + dk[None, :]
                omask = cmask[:, None] & dmask[None, :]
                acc = tl.load(ptr, mask=omask, other=0.0)
                acc = _dot_acc(dzt, h, acc, IEEE)
                tl.store(ptr, acc, mask=omask)
    if NEED_DB:
        tl.store(DB + cols, db, mask=cmask)
