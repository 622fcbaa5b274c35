"""CPU backend: compiled standardisation (C.colstats + C.corr_standardise) per chunk of train
columns, then
  topk:  C.corr_topk_fused: every thread multiplies its own blocks of ~1 MiB of scores with the
         BLAS sgemm_ that torch's MKL exports and feeds them, still in its L2, to its own running
         top-k (C++ threshold scan); one OpenMP region per chunk; per-thread states merged at the
         end (C.corr_topk_merge). Without that symbol (another BLAS), or with
         DAUNCE_FAST_CORR_FUSED=0: torch.matmul per tile into a preallocated buffer, then
         C.corr_select_tile (OpenMP over test columns) on it.
  full:  torch.matmul of the chunk straight into the output rows (or via a tile buffer + cast).

Tile layout: scores[n, M] = Za[:, j0:j1].T @ Zb (train rows, test columns contiguous), which is
also the layout of the full [N, M] output, so full mode multiplies straight into the output rows.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import torch

from .._ext import C
from .engines import Engine
from .standardise import TileStats, first_stats_overflow

# Unfused path / full mode: score tile of about 16 MiB (4096 rows at M = 1000), standardised chunk
# of about 16 MiB. Every sgemm / selection call is an OpenMP region, and on a shared, oversubscribed machine each region
# costs a wait for the other thread's core (libgomp workers spin between regions): measured here
# at load ~9 on 2 cores, N = 50,000: 1 MiB tiles 6.6 s, 4 MiB 4.0 s, 16 MiB 1.4 s. Unloaded,
# 1 MiB tiles were ~5% faster (the selection reads the tile from L2 instead of L3/DRAM), so the
# larger tiles trade a little best-case speed for robustness.
_TILE_BYTES = 16 << 20
_CHUNK_BYTES = 16 << 20


def tile_rows(M: int) -> int:
    return int(min(8192, max(256, (_TILE_BYTES // (4 * max(M, 1))) // 64 * 64)))


def chunk_cols(K: int, tile: int) -> int:
    return tile * max(1, _CHUNK_BYTES // (4 * K * tile))


# Fused top-k (C.corr_topk_fused): per-thread blocks of about 1 MiB of scores, kept in L2.
_FUSED_BYTES = 1 << 20


def cpu_threads() -> int:
    """Threads of the fused top-k region: torch's thread count, capped by the CPUs this process
    may run on (os.sched_getaffinity: taskset / cgroup cpusets). More threads than usable CPUs
    only adds threads that wait for a core, and in one OpenMP region the others wait for them."""
    T = torch.get_num_threads()
    try:
        T = min(T, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    return max(1, T)


@functools.cache
def blas_sgemm() -> int:
    """Address of the Fortran-ABI ``sgemm_`` of torch's own BLAS (MKL exports it, 32-bit ints), or 0.

    Set DAUNCE_FAST_CORR_FUSED=0 to disable the fused path (then the product runs through
    torch.matmul per tile and the selection in its own OpenMP region).
    """
    if os.environ.get("DAUNCE_FAST_CORR_FUSED", "1") == "0":
        return 0
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        addr = ctypes.cast(lib.sgemm_, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0
    if addr and not _fused_self_check(addr):
        return 0
    return addr


def _fused_self_check(addr: int) -> bool:
    """Run the fused kernel once on a small problem and compare with torch: guards against a BLAS
    whose sgemm_ has another ABI (e.g. 64-bit integers)."""
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(5, 300, generator=g), torch.randn(5, 7, generator=g)
    k, T = 3, torch.get_num_threads()
    thr = np.full((T, 7), -np.inf, np.float32)
    cnt = np.zeros((T, 7), np.int32)
    keys = np.zeros((T, 7, 2 * k + 16), np.uint64)
    C.corr_topk_fused(za.numpy(), zb.numpy(), 0, thr, cnt, keys, k, 64, addr)
    v, i = np.empty((7, k), np.float32), np.empty((7, k), np.int64)
    C.corr_topk_merge(thr, cnt, keys, k, v, i)
    ref = torch.topk((za.T @ zb).T, k, dim=1)
    return bool(np.allclose(v, ref.values.numpy(), atol=1e-5))


class CpuEngine(Engine):
    torch_based = False

    def _configure(self, precision: str | None, compute64: bool, tile: int | None) -> None:
        # device: always host memory here (the argument keeps the engines' common signature)
        if precision not in (None, "fp32"):
            raise ValueError(
                f"precision={precision!r} needs a GPU backend (triton or cuda); the cpu backend computes fp32"
            )
        self.np_dtype = np.float64 if compute64 else np.float32
        # tile (driver): train columns read + standardised per chunk; self.sub: rows per score tile
        self.sub = tile_rows(self.M) if tile is None else min(tile_rows(self.M), tile)
        self.tile = tile or chunk_cols(self.K, self.sub)
        self._za = np.empty((self.K, self.tile), self.np_dtype)
        self._buf = None

    # --------------------------------------------------------------- standardisation
    def standardise(self, blk: np.ndarray, factor: float, out: np.ndarray | None = None) -> TileStats:
        K, n = blk.shape
        mean, m2 = np.empty(n), np.empty(n)
        bad = C.colstats(blk, mean, m2)
        z = out if out is not None else self._za[:, :n]
        cm = np.empty(n, np.uint8)
        C.corr_standardise(blk, z, mean, m2, cm, self.pearson, float(factor))
        return TileStats(z, int(bad), cm.view(bool), first_stats_overflow(blk, mean, m2))

    def set_test(self, blk: np.ndarray, factor: float) -> TileStats:
        st = self.standardise(blk, factor, out=np.empty(blk.shape, self.np_dtype))
        self.zb = torch.from_numpy(st.z)  # [K, M] contiguous
        return st

    def _product(self, z: np.ndarray, out: torch.Tensor) -> None:
        torch.matmul(torch.from_numpy(z).T, self.zb, out=out)

    def _tile_buffer(self, n: int) -> torch.Tensor:
        if self._buf is None:
            self._buf = torch.empty((self.sub, self.M), dtype=self.zb.dtype)
        return self._buf[:n]

    def _subtiles(self, n: int):
        for r0 in range(0, n, self.sub):
            yield r0, min(n, r0 + self.sub)

    # --------------------------------------------------------------- full matrix
    def full_tile(self, z: np.ndarray, out: torch.Tensor, clip: bool | None = None) -> None:
        """out[n, M] (a CPU tensor view of the result rows) = scores of this chunk (clip: None = pearson)."""
        clip = self.pearson if clip is None else clip
        if out.dtype == self.zb.dtype and out.is_contiguous():
            self._product(z, out)  # one sgemm straight into the result rows
            if clip:
                out.clamp_(-1.0, 1.0)
            return
        for r0, r1 in self._subtiles(z.shape[1]):
            buf = self._tile_buffer(r1 - r0)
            self._product(z[:, r0:r1], buf)
            if clip:
                buf.clamp_(-1.0, 1.0)
            out[r0:r1].copy_(buf)

    # --------------------------------------------------------------- top-k
    def start_topk(self, k: int) -> None:
        if self.zb.dtype != torch.float32:
            self.zb = self.zb.to(torch.float32)
        self.k = k
        # Candidate buffer of 2k keys per column: a reduction (nth_element) every k passes.
        B = max(2 * k, k + 16)
        self.sgemm = blas_sgemm()
        if self.sgemm:  # one selection state per thread, merged at the end
            T = cpu_threads()
            self.fused_rows = int(min(4096, max(64, _FUSED_BYTES // (4 * self.M))))
            self.thr = np.full((T, self.M), -np.inf, np.float32)
            self.cnt = np.zeros((T, self.M), np.int32)
            self.keys = np.zeros((T, self.M, B), np.uint64)
            return
        self.thr = np.full(self.M, -np.inf, np.float32)
        self.cnt = np.zeros(self.M, np.int32)
        self.keys = np.zeros((self.M, B), np.uint64)
        self._seeded = False

    def select_tile(self, z: np.ndarray, j0: int) -> None:
        if z.dtype != np.float32:
            z = z.astype(np.float32)
        if self.sgemm:
            C.corr_topk_fused(
                z, self.zb.numpy(), j0, self.thr, self.cnt, self.keys, self.k, self.fused_rows, self.sgemm
            )
            return
        subtiles = list(self._subtiles(z.shape[1]))
        if not self._seeded:
            # The first rows go through the column-wise seeding path (every score passes while a
            # column holds fewer than k): keep that piece small, then thresholds filter the rest.
            self._seeded = True
            first = min(z.shape[1], max(2 * self.k, 256))
            if first < subtiles[0][1]:
                subtiles = [(0, first), (first, subtiles[0][1])] + subtiles[1:]
        for r0, r1 in subtiles:
            buf = self._tile_buffer(r1 - r0)
            self._product(z[:, r0:r1], buf)  # then select while the tile is still in cache
            C.corr_select_tile(buf.numpy(), j0 + r0, 0, self.thr, self.cnt, self.keys, self.k)

    def finish_topk(self):
        values = np.empty((self.M, self.k), np.float32)
        indices = np.empty((self.M, self.k), np.int64)
        if self.sgemm:
            C.corr_topk_merge(self.thr, self.cnt, self.keys, self.k, values, indices)
            return torch.from_numpy(values), torch.from_numpy(indices)
        C.corr_select_finish(self.thr, self.cnt, self.keys, self.k, values, indices)
        return torch.from_numpy(values), torch.from_numpy(indices)
