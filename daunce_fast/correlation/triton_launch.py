"""triton backend: the score-tile product in Triton (corr_tile_kernel: tl.dot, fp32 / tf32 / bf16
inputs, fp32 accumulation) and the fused product + threshold filter (corr_filter_kernel), driven
by :class:`.filter_engine.FilterTopkEngine`. Runs on CUDA tensors, or on CPU tensors under
TRITON_INTERPRET=1 (tests, tiny grids; bf16 is unsupported there). Triton itself is imported on
the first launch.
"""

from __future__ import annotations

import torch

from .filter_engine import FilterTopkEngine
from .grids import launch_grids


def _blocks(device: torch.device, K: int) -> dict:
    if device.type == "cuda":
        return dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=32, num_warps=8, num_stages=3)
    return dict(BLOCK_N=16, BLOCK_M=16, BLOCK_K=16)  # interpreter: each program costs ~0.6 ms


_PREC = {"fp32": "ieee", "tf32": "tf32", "bf16": "bf16"}


def _gpu_default(device: torch.device) -> str:
    # TF32 on a GPU (error 4e-5..2.4e-4 on unit-norm columns, REFERENCE.md s.4); the interpreter is exact fp32 anyway.
    return "tf32" if device.type == "cuda" else "fp32"


class TritonEngine(FilterTopkEngine):
    def _precision(self, precision: str | None) -> torch.dtype:
        precision = precision or _gpu_default(self.device)
        if precision == "bf16" and self.device.type != "cuda":
            raise ValueError("precision='bf16' with triton needs a CUDA device (the interpreter computes bf16 wrongly)")
        self.prec = _PREC[precision]
        self.cfg = _blocks(self.device, self.K)
        return torch.bfloat16 if precision == "bf16" else torch.float32

    def _launch_tile(self, z: torch.Tensor, out: torch.Tensor, clip: bool) -> None:
        import triton

        from .triton_kernels import corr_tile_kernel

        n = z.shape[1]
        c = self.cfg
        for c0, c1, gy in launch_grids(self.M, c["BLOCK_M"]):  # grid y is limited to 65,535 blocks
            zb, o = self.zb[:, c0:c1], out[:, c0:c1]
            corr_tile_kernel[(triton.cdiv(n, c["BLOCK_N"]), gy)](
                z,
                zb,
                o,
                n,
                c1 - c0,
                self.K,
                z.stride(0),
                z.stride(1),
                zb.stride(0),
                zb.stride(1),
                o.stride(0),
                o.stride(1),
                CLIP=clip,
                PREC=self.prec,
                **c,
            )

    def _direct_out_ok(self, out: torch.Tensor) -> bool:
        return out.device == self.device and out.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def _launch_filter(self, z: torch.Tensor, j0: int) -> None:
        import triton

        from .triton_kernels import corr_filter_kernel

        n = z.shape[1]
        c = self.cfg
        for c0, c1, gy in launch_grids(self.M, c["BLOCK_M"]):
            # column slices of every per-column buffer ([M, C] row-major: rows c0..c1 are contiguous)
            zb = self.zb[:, c0:c1]
            corr_filter_kernel[(triton.cdiv(n, c["BLOCK_N"]), gy)](
                z,
                zb,
                self.thr[c0:c1],
                self.cnt[c0:c1],
                self.cand_v[c0:c1],
                self.cand_i[c0:c1],
                j0,
                n,
                c1 - c0,
                self.K,
                self.C,
                z.stride(0),
                z.stride(1),
                zb.stride(0),
                zb.stride(1),
                PREC=self.prec,
                **c,
            )
