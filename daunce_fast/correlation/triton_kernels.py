"""Triton kernels of the correlation: a score-tile product and the same product fused with a
threshold filter that appends candidates to per-test-column buffers.

Operands are already standardised (float64 statistics, then cast): za [K, n] (train tile),
zb [K, M] (test). S[i, j] = sum_k za[k, i] * zb[k, j].

Imported only when the triton backend is used (it imports triton at module level).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile_scores(
    za_ptr,
    zb_ptr,
    n,
    M,
    K,
    s_zak,
    s_zai,
    s_zbk,
    s_zbj,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """[BLOCK_N, BLOCK_M] block of S for this program, accumulated in fp32."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        a = tl.load(
            za_ptr + kk[None, :] * s_zak + rows[:, None] * s_zai,
            mask=(kk[None, :] < K) & (rows[:, None] < n),
            other=0.0,
        )
        b = tl.load(
            zb_ptr + kk[:, None] * s_zbk + cols[None, :] * s_zbj,
            mask=(kk[:, None] < K) & (cols[None, :] < M),
            other=0.0,
        )
        if PREC == "bf16":
            acc = tl.dot(a, b, acc)
        else:
            acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc, rows, cols


@triton.jit
def corr_tile_kernel(
    za_ptr,
    zb_ptr,
    out_ptr,
    n,
    M,
    K,
    s_zak,
    s_zai,
    s_zbk,
    s_zbj,
    s_on,
    s_om,
    CLIP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """out[i, j] = S[i, j] (clipped to [-1, 1] when CLIP; NaN stays NaN), cast to out's dtype."""
    acc, rows, cols = _tile_scores(za_ptr, zb_ptr, n, M, K, s_zak, s_zai, s_zbk, s_zbj, BLOCK_N, BLOCK_M, BLOCK_K, PREC)
    if CLIP:  # comparisons, not min/max: those would turn NaN into +-1
        acc = tl.where(acc > 1.0, 1.0, tl.where(acc < -1.0, -1.0, acc))
    mask = (rows[:, None] < n) & (cols[None, :] < M)
    tl.store(out_ptr + rows[:, None] * s_on + cols[None, :] * s_om, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def corr_filter_kernel(
    za_ptr,
    zb_ptr,
    thr_ptr,
    cnt_ptr,
    cand_v_ptr,
    cand_i_ptr,
    row0,
    n,
    M,
    K,
    C,
    s_zak,
    s_zai,
    s_zbk,
    s_zbj,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """Scores above their column's threshold thr[j] are appended to that column's buffer:
    slot = atomic_add(cnt[j], 1); cand_v[j, slot] = S[i, j]; cand_i[j, slot] = row0 + i, for
    slot < C. cnt[j] may end above C: the caller then redoes the tile unfused. NaN never passes."""
    acc, rows, cols = _tile_scores(za_ptr, zb_ptr, n, M, K, s_zak, s_zai, s_zbk, s_zbj, BLOCK_N, BLOCK_M, BLOCK_K, PREC)
    thr = tl.load(thr_ptr + cols, mask=cols < M, other=float("inf"))
    ok = (acc > thr[None, :]) & (rows[:, None] < n) & (cols[None, :] < M)
    colmat = cols[None, :] + tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    slot = tl.atomic_add(cnt_ptr + colmat, 1, mask=ok)
    keep = ok & (slot < C)
    dst = colmat.to(tl.int64) * C + slot
    tl.store(cand_v_ptr + dst, acc, mask=keep)
    idx = rows[:, None].to(tl.int64) + row0 + tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int64)
    tl.store(cand_i_ptr + dst, idx, mask=keep)
