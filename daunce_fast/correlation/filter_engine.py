"""The tile driver shared by the triton and cuda backends: score tiles come from a backend's
kernel (``_launch_tile``), top-k from a fused product + threshold filter (``_launch_filter``) that
appends the few passing scores to per-column candidate buffers, merged into the running top-k
with torch.topk after each tile.

Per tile of n train rows (test columns j, running top-k values V[j, :k] and threshold thr[j]):
  first tile, or a filter overflow:  S = tile product -> V = topk(cat(V, S.T)) (unfused)
  otherwise:                         the filter appends S[i, j] > thr[j] after V[j]
                                     -> V = topk(candidates); thr[j] = V[j, k-1]
After the first tile only about k n / (rows seen) scores per column pass, so the filter's output
is tiny and the product dominates.

A base class rather than the cuda engine inheriting the triton one: the two backends share
this driver and nothing else (their kernels, precisions and operand layouts differ), and the
cuda backend must not depend on the triton backend's module.
"""

from __future__ import annotations

import torch

from .engines import Engine
from .standardise import TileStats, standardise_torch


class FilterTopkEngine(Engine):
    """Engine of one backend whose kernels are: ``_launch_tile(z, out, clip)``, the scores of a
    standardised train tile z [K, n] against the test columns ``self.zb`` [K, M] into out [n, M]
    (clipped to [-1, 1] if ``clip``); ``_launch_filter(z, j0)``, the fused product + filter that
    appends scores above ``thr`` to ``cand_v`` / ``cand_i`` and counts them in ``cnt``;
    ``_direct_out_ok(out)``, whether the tile kernel may write into ``out`` itself; and
    ``_precision(precision)``, its part of the constructor (:class:`.engines.Engine`)."""

    def _configure(self, precision: str | None, compute64: bool, tile: int | None) -> None:
        # compute64 (float64 output) does not change the product here: it stays fp32 / tf32 / bf16
        self.dtype = self._precision(precision)  # of the standardised operands in memory
        # ~512 MiB of fp32 score tile on a GPU (also bounds the unfused first tile's topk input)
        self.tile = tile or int(max(1024, min(1 << 17, (512 << 20) // (4 * max(self.M, 1)))))
        self._buf = None

    def _precision(self, precision: str | None) -> torch.dtype:
        """Check ``precision`` (None: the backend's default) on ``self.device`` and keep the kernels'
        setting for it; returns the dtype of the standardised operands in memory."""
        raise NotImplementedError

    def _launch_tile(self, z: torch.Tensor, out: torch.Tensor, clip: bool) -> None:
        raise NotImplementedError

    def _launch_filter(self, z: torch.Tensor, j0: int) -> None:
        raise NotImplementedError

    def _direct_out_ok(self, out: torch.Tensor) -> bool:
        raise NotImplementedError

    def standardise(self, blk: torch.Tensor, factor: float) -> TileStats:
        return standardise_torch(blk, self.pearson, factor, self.dtype)

    def set_test(self, blk: torch.Tensor, factor: float) -> TileStats:
        st = self.standardise(blk, factor)
        self.zb = st.z.contiguous()
        return st

    def _scores(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[1]
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = torch.empty((max(n, self.tile), self.M), dtype=torch.float32, device=self.device)
        buf = self._buf[:n]
        self._launch_tile(z, buf, clip=False)
        return buf

    def full_tile(self, z: torch.Tensor, out: torch.Tensor, clip: bool | None = None) -> None:
        clip = self.pearson if clip is None else clip
        if self._direct_out_ok(out):
            self._launch_tile(z, out, clip=clip)
        else:
            s = self._scores(z)
            if clip:
                s.clamp_(-1.0, 1.0)
            out.copy_(s)

    # ------------------------------------------------------------------ top-k
    def start_topk(self, k: int, slack: int = 256) -> None:
        self.k = k
        self.C = 2 * k + slack  # candidate slots per column: k held + room for one tile's passes
        M, dev = self.M, self.device
        self.cand_v = torch.full((M, self.C), float("-inf"), dtype=torch.float32, device=dev)
        self.cand_i = torch.full((M, self.C), -1, dtype=torch.int64, device=dev)
        self.cnt = torch.zeros(M, dtype=torch.int32, device=dev)
        self.thr = torch.full((M,), float("-inf"), dtype=torch.float32, device=dev)
        self.started = False
        self.unfused_tiles = 0

    def _merge(self, v: torch.Tensor, i: torch.Tensor) -> None:
        """Keep the k best of candidates v/i [M, c] (-inf = empty) as the held top-k; update thr/cnt."""
        k = self.k
        top_v, pos = torch.topk(v, k, dim=1)
        top_i = torch.gather(i, 1, pos)
        self.cand_v[:, :k] = top_v
        self.cand_i[:, :k] = top_i
        nvalid = (top_v > float("-inf")).sum(1)
        self.cnt.copy_(nvalid.to(torch.int32))
        self.thr.copy_(torch.where(nvalid == k, top_v[:, k - 1], torch.full_like(top_v[:, 0], float("-inf"))))

    def _held(self):
        k = self.k
        valid = torch.arange(k, device=self.device)[None, :] < self.cnt[:, None]
        v = torch.where(valid, self.cand_v[:, :k], torch.full_like(self.cand_v[:, :k], float("-inf")))
        return v, self.cand_i[:, :k]

    def _select_unfused(self, z: torch.Tensor, j0: int) -> None:
        s = self._scores(z).T  # [M, n]
        n = s.shape[1]
        s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
        hv, hi = self._held()
        idx = torch.arange(j0, j0 + n, device=self.device, dtype=torch.int64).expand(self.M, n)
        self._merge(torch.cat([hv, s], 1), torch.cat([hi, idx], 1))
        self.unfused_tiles += 1

    def select_tile(self, z: torch.Tensor, j0: int) -> None:
        if not self.started:
            self.started = True
            return self._select_unfused(z, j0)
        before = self.cnt.clone()
        self._launch_filter(z, j0)
        if int(self.cnt.max()) > self.C:  # some column overflowed its buffer: redo this tile unfused
            self.cnt.copy_(before)
            return self._select_unfused(z, j0)
        valid = torch.arange(self.C, device=self.device)[None, :] < self.cnt[:, None]
        v = torch.where(valid, self.cand_v, torch.full_like(self.cand_v, float("-inf")))
        self._merge(v, self.cand_i)

    def finish_topk(self):
        v, i = self._held()
        bad = v == float("-inf")
        v = torch.where(bad, torch.full_like(v, float("nan")), v)
        i = torch.where(bad, torch.full_like(i, -1), i)
        return v, i
