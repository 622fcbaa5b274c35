"""Compile the loss-head Triton kernels ahead of time for a GPU target, without a GPU.

usage: python _aot_compile.py [arch=90]   (run without TRITON_INTERPRET; prints one line per kernel)
Catches what the interpreter cannot: type errors in loop-carried values, illegal tl.dot shapes or
dtypes, register/shared-memory blow-ups, on the real compiler pipeline down to ptxas.
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from daunce_fast.losses import triton_kernels as K  # noqa: E402

HEAD = ["HAS_BIAS", "IEEE", "BLOCK_M", "BLOCK_V", "BLOCK_D"]


def compile_one(fn, ptrs, ints, consts, warps, target):
    sig = {**ptrs, **{n: "i32" for n in ints}, **{n: "constexpr" for n in consts}}
    k = triton.compile(ASTSource(fn, sig, consts), target=target, options={"num_warps": warps})
    print(f"{fn.__name__} {sorted(consts.items())} ok: shared={k.metadata.shared}")


def main():
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    target = GPUTarget("cuda", arch, 32)
    # the launcher's GPU tiles (triton_launch._blocks): fp32 (32, 64, 32) x4 warps, half (64, 128, 64) x8
    for dt, (bm, bv, bd, warps) in (("bf16", (64, 128, 64, 8)), ("fp32", (32, 64, 32, 4))):
        P = "*" + dt
        c = {"HAS_BIAS": True, "IEEE": dt == "fp32", "BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd}
        base = {"H": P, "W": P, "B": P, "Y": "*i64", "LSE_O": "*fp32"}
        compile_one(K.row_stats_kernel, {**base, "ZY": "*fp32"}, ["N", "V", "D", "stride_h", "stride_w"], c, warps,
                    target)
        g = {**base, "GO": "*fp32", "GY": "*fp32"}
        compile_one(K.row_grad_dh_kernel, {**g, "DH": "*fp32"}, ["N", "V", "D", "stride_h", "stride_w", "stride_dh"],
                    c, warps, target)
        compile_one(K.row_grad_dw_kernel, {**g, "DW": "*fp32", "DB": "*fp32"},
                    ["N", "V", "D", "stride_h", "stride_w", "stride_dw"],
                    {**c, "NEED_DW": True, "NEED_DB": True}, warps, target)


if __name__ == "__main__":
    main()
