"""Triton kernels of the batched multi-LoRA linear op (imported lazily by triton_launch.py only).

Rows are adapter-major: segment ``k`` holds rows ``[k*m, (k+1)*m)``. Every program works inside one
segment (its row tiles never straddle two adapters), so each program reads one adapter's weights.
Three kernels, each used twice (forward and backward) through strides:

  _seg_shrink   OUT[n, c]    = scale * sum_j X[n, j] * M[k, j, c]          (X.A^T, and g = s*dY.B)
  _gemm_expand  OUT[n, j]    = sum_i X[n, i] Wm[j, i] + bias[j] + scale * sum_c H[n, c] E[k, j, c]
                                (forward: the frozen GEMM with the expand in its epilogue;
                                 backward: dX = dY.W + g.A[k], the same kernel on transposed strides)
  _seg_outer    OUT[k, c, j] = scale * sum_{i<m} P[k*m+i, c] * Q[k*m+i, j]  (dA = g^T.x, dB = s*dY^T.h)

The rank is padded to ``R_PAD`` (a power of two >= 16, as ``tl.dot`` wants) by masked loads;
``d`` need not divide any tile. Accumulation is fp32. LoRA products run in the adapters' dtype
(the other operand is cast to it, as PEFT does); the base GEMM in the activations' dtype.
Row offsets are int64 so ``N * d`` may exceed 2^31.
"""

import triton
import triton.language as tl


@triton.jit
def _seg_shrink(
    X,
    M,
    OUT,
    m,
    D,
    R,
    tiles_per_seg,
    sxn,
    sxd,
    smk,
    smd,
    smr,
    son,
    sor,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    R_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    k = pid // tiles_per_seg
    offs_i = (pid % tiles_per_seg) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_i < m
    rows = k.to(tl.int64) * m + offs_i
    offs_c = tl.arange(0, R_PAD)
    c_ok = offs_c < R
    acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for j0 in range(0, D, BLOCK_D):
        offs_j = j0 + tl.arange(0, BLOCK_D)
        j_ok = offs_j < D
        xt = tl.load(X + rows[:, None] * sxn + offs_j[None, :] * sxd, mask=row_ok[:, None] & j_ok[None, :], other=0.0)
        mt = tl.load(
            M + k * smk + offs_j[:, None] * smd + offs_c[None, :] * smr, mask=j_ok[:, None] & c_ok[None, :], other=0.0
        )
        acc = tl.dot(xt.to(mt.dtype), mt, acc, input_precision=PREC)
    acc = acc * scale
    tl.store(
        OUT + rows[:, None] * son + offs_c[None, :] * sor,
        acc.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & c_ok[None, :],
    )


@triton.jit
def _gemm_expand(
    X,
    Wm,
    BIAS,
    H,
    E,
    OUT,
    m,
    N_OUT,
    D,
    R,
    tiles_per_seg,
    sxn,
    sxd,
    swj,
    swd,
    shn,
    shr,
    sek,
    sej,
    ser,
    son,
    soj,
    scale,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    R_PAD: tl.constexpr,
    PREC_BASE: tl.constexpr,
    PREC_LORA: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    k = pid_m // tiles_per_seg
    offs_i = (pid_m % tiles_per_seg) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_i < m
    rows = k.to(tl.int64) * m + offs_i
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    j_ok = offs_j < N_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        offs_d = d0 + tl.arange(0, BLOCK_K)
        d_ok = offs_d < D
        xt = tl.load(X + rows[:, None] * sxn + offs_d[None, :] * sxd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        wt = tl.load(Wm + offs_d[:, None] * swd + offs_j[None, :] * swj, mask=d_ok[:, None] & j_ok[None, :], other=0.0)
        acc = tl.dot(xt, wt.to(xt.dtype), acc, input_precision=PREC_BASE)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    # Epilogue: the low-rank expand of this tile's adapter, from the saved [rows, r] product.
    offs_c = tl.arange(0, R_PAD)
    c_ok = offs_c < R
    ht = tl.load(H + rows[:, None] * shn + offs_c[None, :] * shr, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
    et = tl.load(
        E + k * sek + offs_c[:, None] * ser + offs_j[None, :] * sej, mask=c_ok[:, None] & j_ok[None, :], other=0.0
    )
    lora = tl.dot(ht.to(et.dtype), et, input_precision=PREC_LORA)
    acc += scale * lora
    tl.store(
        OUT + rows[:, None] * son + offs_j[None, :] * soj,
        acc.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & j_ok[None, :],
    )


@triton.jit
def _seg_outer(
    P,
    Q,
    OUT,
    m,
    D,
    R,
    spn,
    spr,
    sqn,
    sqd,
    sok,
    sor,
    sod,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    R_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
    k = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_c = tl.arange(0, R_PAD)
    c_ok = offs_c < R
    acc = tl.zeros((R_PAD, BLOCK_D), dtype=tl.float32)
    for i0 in range(0, m, BLOCK_M):
        offs_i = i0 + tl.arange(0, BLOCK_M)
        i_ok = offs_i < m
        rows = k.to(tl.int64) * m + offs_i
        # P loaded already transposed: [R_PAD, BLOCK_M].
        pt = tl.load(P + rows[None, :] * spn + offs_c[:, None] * spr, mask=c_ok[:, None] & i_ok[None, :], other=0.0)
        qt = tl.load(Q + rows[:, None] * sqn + offs_d[None, :] * sqd, mask=i_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(pt, qt.to(pt.dtype), acc, input_precision=PREC)
    acc = acc * scale
    tl.store(
        OUT + k * sok + offs_c[:, None] * sor + offs_d[None, :] * sod,
        acc.to(OUT.dtype.element_ty),
        mask=c_ok[:, None] & d_ok[None, :],
    )
