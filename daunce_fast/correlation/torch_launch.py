"""torch backend: float64 scores computed tile by tile in plain torch (CPU or CUDA), the portable
path. The oracle the tests compare every backend with is :mod:`.reference` (untiled, float64).

Top-k keeps a running [M, k] selection and merges each tile into it with a stable descending
sort, so ties go to the lower train index, exactly like the compiled CPU selection.
"""

from __future__ import annotations

import torch

from .engines import Engine
from .standardise import TileStats, standardise_torch


def tile_rows(M: int) -> int:
    return int(min(8192, max(64, (8 << 20) // (8 * max(M, 1)))))


class TorchEngine(Engine):
    def _configure(self, precision: str | None, compute64: bool, tile: int | None) -> None:
        # precision and compute64 do not apply: this backend computes in float64 throughout
        self.tile = tile or tile_rows(self.M)

    def standardise(self, blk: torch.Tensor, factor: float) -> TileStats:
        return standardise_torch(blk, self.pearson, factor, torch.float64)

    def set_test(self, blk: torch.Tensor, factor: float) -> TileStats:
        st = self.standardise(blk, factor)
        self.zb = st.z
        return st

    def full_tile(self, z: torch.Tensor, out: torch.Tensor, clip: bool | None = None) -> None:
        s = z.T @ self.zb
        if self.pearson if clip is None else clip:
            s = s.clamp(-1.0, 1.0)
        out.copy_(s)

    def start_topk(self, k: int) -> None:
        self.k = k
        self.vals = torch.full((self.M, 0), float("-inf"), dtype=torch.float64, device=self.device)
        self.idx = torch.empty((self.M, 0), dtype=torch.int64, device=self.device)

    def select_tile(self, z: torch.Tensor, j0: int) -> None:
        s = (z.T @ self.zb).T  # [M, n]
        s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
        n = s.shape[1]
        cand_v = torch.cat([self.vals, s], dim=1)
        cand_i = torch.cat([self.idx, torch.arange(j0, j0 + n, device=self.device).expand(self.M, n)], dim=1)
        # stable: held candidates (lower indices) stay ahead of equal new scores
        v, order = torch.sort(cand_v, dim=1, descending=True, stable=True)
        self.vals = v[:, : self.k].contiguous()
        self.idx = torch.gather(cand_i, 1, order[:, : self.k]).contiguous()

    def finish_topk(self):
        v, i = self.vals, self.idx
        if v.shape[1] < self.k:  # fewer train examples seen than k cannot happen (k <= N), kept for safety
            pad = self.k - v.shape[1]
            v = torch.cat([v, torch.full((self.M, pad), float("-inf"), dtype=v.dtype, device=v.device)], 1)
            i = torch.cat([i, torch.full((self.M, pad), -1, dtype=i.dtype, device=i.device)], 1)
        bad = torch.isinf(v) & (v < 0)
        v = torch.where(bad, torch.full_like(v, float("nan")), v)
        i = torch.where(bad, torch.full_like(i, -1), i)
        return v.to(torch.float32), i
