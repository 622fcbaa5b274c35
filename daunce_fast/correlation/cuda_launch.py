"""cuda backend: the hand-written kernels of csrc/cuda/corr_tile.cu (64 x 64 tiles, SIMT fp32 or
WMMA tensor cores for tf32 / bf16; no cuBLAS), driven like the triton backend by
:class:`.filter_engine.FilterTopkEngine`: a fused product + threshold filter appends candidates
to per-column buffers, merged into the running top-k with torch.topk after each tile; the first
tile (and any tile that overflows a buffer) goes unfused. Operands stay float32 in memory; the
kernel rounds them to tf32 / bf16 when staging them.
"""

from __future__ import annotations

import torch

from .._ext import C
from .filter_engine import FilterTopkEngine

_PREC = {"fp32": 0, "tf32": 1, "bf16": 2}


class CudaEngine(FilterTopkEngine):
    def _precision(self, precision: str | None) -> torch.dtype:
        if self.device.type != "cuda":
            raise ValueError("the cuda backend needs CUDA tensors")
        self.prec_code = _PREC[precision or "tf32"]
        return torch.float32  # rounded to tf32 / bf16 by the kernels when they stage the operands

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    @staticmethod
    def _operand(z: torch.Tensor) -> torch.Tensor:
        z = z.to(torch.float32)
        return z if z.stride(1) == 1 else z.contiguous()

    def _direct_out_ok(self, out: torch.Tensor) -> bool:
        return out.device == self.device and out.dtype == torch.float32 and out.stride(1) == 1

    def _launch(self, kernel, z: torch.Tensor, *args) -> None:
        """kernel(train tile z [K, n], test columns zb [K, M], sizes, *args, stream) on this device."""
        z = self._operand(z)
        with torch.cuda.device(self.device):
            kernel(
                z.data_ptr(),
                z.stride(0),
                self.zb.data_ptr(),
                self.zb.stride(0),
                z.shape[1],
                self.M,
                self.K,
                *args,
                self._stream(),
            )

    def _launch_tile(self, z: torch.Tensor, out: torch.Tensor, clip: bool) -> None:
        self._launch(C.corr_tile_cuda, z, out.data_ptr(), out.stride(0), clip, self.prec_code)

    def _launch_filter(self, z: torch.Tensor, j0: int) -> None:
        self._launch(
            C.corr_filter_cuda,
            z,
            self.thr.data_ptr(),
            self.cnt.data_ptr(),
            self.cand_v.data_ptr(),
            self.cand_i.data_ptr(),
            self.C,
            j0,
            self.prec_code,
        )
