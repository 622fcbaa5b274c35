"""Compile every Triton kernel of daunce_fast ahead of time for a GPU target, without a GPU.

usage: python tests/_triton_aot.py [default|full] [arch=90] [jobs=1]
Run it WITHOUT TRITON_INTERPRET (this script drops it before importing triton) and with an empty
TRITON_CACHE_DIR, so that ptxas runs for every variant and its log (registers, spills) is seen.
Prints one JSON object per variant on stdout; exit status 1 if any variant failed to compile.

A variant is one launch site of a launcher (lora, losses, correlation triton_launch.py) with the
dtypes, constexprs, warps and stages it passes, and the specialisation Triton's JIT would make
for a typical large shape: integer arguments equal to 1 become constexpr 1, integers divisible
by 16 and every pointer get the divisibility-16 hint (as triton/tools/compile.py does). Block
sizes come from the launchers' own choices (their ``_blocks`` with the interpreter off).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DUMP_PTXAS_LOG", "1")  # ptxas -v log, printed by triton's make_cubin
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from daunce_fast.correlation import triton_kernels as CK
from daunce_fast.correlation import triton_launch as CL
from daunce_fast.lora import triton_kernels as LK
from daunce_fast.lora import triton_launch as LL
from daunce_fast.losses import triton_kernels as HK
from daunce_fast.losses import triton_launch as HL

PACKAGE = Path(__file__).resolve().parents[1] / "daunce_fast"
# @triton.jit functions that are only called from other kernels (inlined, never launched).
DEVICE_HELPERS = {"_dot_acc", "_logits_tile", "_dz_tile", "_tile_scores"}
TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


class Variant:
    """kernel ``fn`` launched with ``args`` {name: (type, typical value)} (pointers: value None),
    constexprs ``consts``, ``warps`` and ``stages``; ``name`` says where and what."""

    def __init__(self, name, fn, args, consts, warps, stages=None):
        self.name, self.fn, self.args, self.consts, self.warps, self.stages = name, fn, args, consts, warps, stages

    def source(self) -> ASTSource:
        return ASTSource(self.fn, *self.spec())

    def key(self) -> str:
        """Identifies what gets compiled (two launch sites with the same key compile the same code)."""
        sig, consts, attrs = self.spec()
        return repr(
            (self.fn.__name__, sorted(sig.items()), sorted(consts.items()), sorted(attrs), self.warps, self.stages)
        )

    def spec(self):
        """(signature, constexprs, attrs) as the JIT would specialise this launch."""
        names = self.fn.arg_names
        sig, consts, attrs = {}, dict(self.consts), {}
        for a in names:
            if a in self.consts:
                sig[a] = "constexpr"
                continue
            ty, val = self.args[a]
            if ty.startswith("i") and val == 1:  # the JIT turns an int 1 into a constant
                sig[a], consts[a] = "constexpr", 1
                continue
            sig[a] = ty
            if ty.startswith("*") or (ty.startswith("i") and val % 16 == 0):
                attrs[(names.index(a),)] = [["tt.divisibility", 16]]
        missing = set(names) - set(sig)
        if missing:
            raise KeyError(f"{self.name}: no type for {sorted(missing)}")
        return sig, consts, attrs

    def options(self) -> dict:
        opt = {"num_warps": self.warps}
        if self.stages is not None:
            opt["num_stages"] = self.stages
        return opt


def _i(**vals):
    return {k: ("i32", v) for k, v in vals.items()}


def _p(**types):
    return {k: ("*" + (TY[t] if isinstance(t, torch.dtype) else t), None) for k, t in types.items()}


# ---------------------------------------------------------------------------------------- lora
def lora_variants(act, adp, rank, m, bias=True, tf32=False):
    """The six launches of lora/triton_launch.py for activations ``act`` and adapters ``adp``
    (shapes: d_in = d_out = 4096, m rows per adapter); PREC as _prec() picks it."""
    d_in = d_out = 4096
    r = rank
    bm, bn, bk, warps, stages = LL._blocks(m, act)
    rp = LL._r_pad(r)
    pl = "tf32" if (tf32 and adp == F32) else "ieee"
    pb = "tf32" if (tf32 and act == F32) else "ieee"
    tiles = triton.cdiv(m, bm)
    tag = f"act={TY[act]} adapters={TY[adp]} r={r} m={m}{' tf32' if tf32 else ''}"
    sc = {"scale": ("fp32", None)}
    sh = {"BLOCK_M": bm, "BLOCK_D": bk, "R_PAD": rp, "PREC": pl}
    out = [
        Variant(
            f"lora shrink fwd (x.A^T) {tag}",
            LK._seg_shrink,
            {
                **_p(X=act, M=adp, OUT=adp),
                **_i(
                    m=m, D=d_in, R=r, tiles_per_seg=tiles, sxn=d_in, sxd=1, smk=r * d_in, smd=1, smr=d_in, son=r, sor=1
                ),
                **sc,
            },
            sh,
            warps,
            stages,
        ),
        Variant(
            f"lora shrink bwd (dy.B) {tag}",
            LK._seg_shrink,
            {
                **_p(X=act, M=adp, OUT=adp),
                **_i(
                    m=m, D=d_out, R=r, tiles_per_seg=tiles, sxn=d_out, sxd=1, smk=d_out * r, smd=r, smr=1, son=r, sor=1
                ),
                **sc,
            },
            sh,
            warps,
            stages,
        ),
    ]
    ge = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "R_PAD": rp, "PREC_BASE": pb, "PREC_LORA": pl}
    out.append(
        Variant(
            f"lora gemm+expand fwd {'bias ' if bias else ''}{tag}",
            LK._gemm_expand,
            {
                **_p(X=act, Wm=act, BIAS=act, H=adp, E=adp, OUT=act),
                **_i(
                    m=m,
                    N_OUT=d_out,
                    D=d_in,
                    R=r,
                    tiles_per_seg=tiles,
                    sxn=d_in,
                    sxd=1,
                    swj=d_in,
                    swd=1,
                    shn=r,
                    shr=1,
                    sek=d_out * r,
                    sej=r,
                    ser=1,
                    son=d_out,
                    soj=1,
                ),
                **sc,
            },
            {**ge, "HAS_BIAS": bias},
            warps,
            stages,
        )
    )
    out.append(
        Variant(
            f"lora gemm+expand bwd (dx) {tag}",
            LK._gemm_expand,
            {
                **_p(X=act, Wm=act, BIAS=act, H=adp, E=adp, OUT=act),
                **_i(
                    m=m,
                    N_OUT=d_in,
                    D=d_out,
                    R=r,
                    tiles_per_seg=tiles,
                    sxn=d_out,
                    sxd=1,
                    swj=1,
                    swd=d_in,
                    shn=r,
                    shr=1,
                    sek=r * d_in,
                    sej=1,
                    ser=d_in,
                    son=d_in,
                    soj=1,
                ),
                **sc,
            },
            {**ge, "HAS_BIAS": False},
            warps,
            stages,
        )
    )
    # _outer's tiles are inline in the launcher: BLOCK_M 32 (fp32 Q) / 64, BLOCK_D 128, 4 warps, 3 stages
    obm = 32 if act == F32 else 64
    oc = {"BLOCK_M": obm, "BLOCK_D": 128, "R_PAD": rp, "PREC": pl}
    out.append(
        Variant(
            f"lora outer dB {tag}",
            LK._seg_outer,
            {
                **_p(P=adp, Q=act, OUT=adp),
                **_i(m=m, D=d_out, R=r, spn=r, spr=1, sqn=d_out, sqd=1, sok=d_out * r, sor=1, sod=r),
                **sc,
            },
            oc,
            4,
            3,
        )
    )
    out.append(
        Variant(
            f"lora outer dA {tag}",
            LK._seg_outer,
            {
                **_p(P=adp, Q=act, OUT=adp),
                **_i(m=m, D=d_in, R=r, spn=r, spr=1, sqn=d_in, sqd=1, sok=r * d_in, sor=d_in, sod=1),
                **sc,
            },
            oc,
            4,
            3,
        )
    )
    return out


# -------------------------------------------------------------------------------------- losses
def loss_variants(dt, bias=True, need_dw=True, need_db=True, d=4096):
    """row_stats / row_grad (dh, dW) of losses/triton_launch.py, rows of d = 4096, V = 50257."""
    n, v = 8192, 50257
    bm, bv, bd, warps = HL._blocks(dt, d)
    c = {"HAS_BIAS": bias, "IEEE": dt == F32, "BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd}
    base = {**_p(H=dt, W=dt, B=dt, Y="i64", LSE_O=F32), **_i(N=n, V=v, D=d, stride_h=d, stride_w=d)}
    g = {**base, **_p(GO=F32, GY=F32)}
    tag = f"{TY[dt]} d={d}{' bias' if bias else ''}"
    return [
        Variant(f"losses row_stats {tag}", HK.row_stats_kernel, {**base, **_p(ZY=F32)}, c, warps),
        Variant(f"losses row_grad dh {tag}", HK.row_grad_dh_kernel, {**g, **_p(DH=F32), **_i(stride_dh=d)}, c, warps),
        Variant(
            f"losses row_grad dW{' db' if need_db else ''} {tag}",
            HK.row_grad_dw_kernel,
            {**g, **_p(DW=F32, DB=F32), **_i(stride_dw=d)},
            {**c, "NEED_DW": need_dw, "NEED_DB": need_db},
            warps,
        ),
    ]


# --------------------------------------------------------------------------------- correlation
def corr_variants(precision, out_dtypes=(F32,), clips=(True,), K=100):
    """corr_tile (full mode, one per out dtype / clip) and corr_filter (top-k) of
    correlation/triton_launch.py; tile n = 131072 train columns, M = 10000 test columns."""
    n, M, k = 131072, 10000, 100
    cfg = dict(CL._blocks(torch.device("cuda"), K))
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    prec = CL._PREC[precision]
    z = BF16 if precision == "bf16" else F32
    c = {**cfg, "PREC": prec}
    ab = {**_p(za_ptr=z, zb_ptr=z), **_i(n=n, M=M, K=K, s_zak=n, s_zai=1, s_zbk=M, s_zbj=1)}
    out = []
    for odt in out_dtypes:
        for clip in clips:
            out.append(
                Variant(
                    f"correlation corr_tile {precision} out={TY[odt]}{' clip' if clip else ''} K={K}",
                    CK.corr_tile_kernel,
                    {**ab, **_p(out_ptr=odt), **_i(s_on=M, s_om=1)},
                    {**c, "CLIP": clip},
                    warps,
                    stages,
                )
            )
    out.append(
        Variant(
            f"correlation corr_filter {precision} K={K}",
            CK.corr_filter_kernel,
            {**ab, **_p(thr_ptr=F32, cnt_ptr="i32", cand_v_ptr=F32, cand_i_ptr="i64"), **_i(row0=n, C=2 * k + 256)},
            c,
            warps,
            stages,
        )
    )
    return out


# ---------------------------------------------------------------------------------------- sets
def default_set() -> list[Variant]:
    """One variant per kernel and dtype family at the launchers' largest tiles (rank 64, m >= 64).
    Of the LoRA kernels' two launches each, the backward shrink (dy.B) and dA outer products are
    left to the full sweep (same kernels, transposed strides); the dx gemm+expand stays (no bias)."""
    out = []
    for act, adp in ((F32, F32), (BF16, F32), (BF16, BF16)):
        out += [
            v
            for v in lora_variants(act, adp, rank=64, m=256)
            if "shrink bwd" not in v.name and "outer dA" not in v.name
        ]
    for dt in (F32, BF16):
        out += loss_variants(dt)
    out += corr_variants("fp32")
    out += corr_variants("tf32")
    out += corr_variants("bf16", out_dtypes=(BF16,))
    return out


def full_set() -> list[Variant]:
    """The launchers' tile / rank-padding / dtype / flag classes: every BLOCK_M class of the LoRA
    kernels (16 with 4 warps, 64 with 8), R_PAD 16..128, five dtype pairs, TF32, bias or not,
    every correlation output dtype and precision, and the loss head's BLOCK_D and flag choices."""
    out = []
    for act, adp in ((F32, F32), (BF16, F32), (BF16, BF16), (F16, F32), (F16, F16)):
        for rank in (8, 32, 64, 128):
            for m in (16, 256):
                for bias in (True, False):  # only the forward gemm+expand differs (duplicates dropped below)
                    out += lora_variants(act, adp, rank, m, bias=bias)
    for m in (32, 256):
        out += lora_variants(F32, F32, 64, m, tf32=True)
    for dt in (F32, F16, BF16):
        for d in (32, 4096):  # BLOCK_D follows d below 64
            for bias in (True, False):
                out += loss_variants(dt, bias=bias, d=d)
        out += loss_variants(dt, need_db=False)[2:]
    for K in (100, 128):
        out += corr_variants("fp32", out_dtypes=(F32, F16, BF16, torch.float64), clips=(True, False), K=K)
        out += corr_variants("tf32", out_dtypes=(F32, F16, BF16, torch.float64), clips=(True, False), K=K)
        out += corr_variants("bf16", out_dtypes=(F32, BF16), clips=(True, False), K=K)
    seen, uniq = set(), []
    for v in out:  # the loops repeat some variants (the outer kernels do not depend on bias or m)
        key = v.key()
        if key not in seen:
            seen.add(key)
            uniq.append(v)
    return uniq


SETS = {"default": default_set, "full": full_set}
_CACHE: dict = {}


def _compile_index(which: str, arch: int, i: int) -> dict:
    """Worker: compile variant ``i`` of set ``which`` (each process builds the list itself)."""
    if which not in _CACHE:
        _CACHE[which] = SETS[which]()
    return compile_variant(_CACHE[which][i], GPUTarget("cuda", arch, 32))


def package_kernels() -> set[str]:
    """Names of every @triton.jit function in the package, found by parsing the sources."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "triton.jit" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


_LOG = {
    "regs": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def compile_variant(v: Variant, target) -> dict:
    row = {"name": v.name, "kernel": v.fn.__name__, "warps": v.warps, "stages": v.stages}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(v.source(), target=target, options=v.options())
    except Exception as exc:  # report every failure, then fail the run
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-1500:]}")
    else:
        row.update(ok=True, shared=int(k.metadata.shared))
        text = log.getvalue()
        for key, rx in _LOG.items():  # absent when this triton does not print ptxas's log: "n/a"
            m = rx.search(text)
            row[key] = int(m.group(1)) if m else "n/a"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv) -> int:
    which = argv[1] if len(argv) > 1 else "default"
    arch = int(argv[2]) if len(argv) > 2 else 90
    jobs = int(argv[3]) if len(argv) > 3 else 1
    variants = SETS[which]()
    compiled = {v.fn.__name__ for v in variants}
    uncovered = sorted(package_kernels() - DEVICE_HELPERS - compiled)
    print(
        json.dumps(
            {
                "set": which,
                "arch": arch,
                "variants": len(variants),
                "triton": triton.__version__,
                "uncovered": uncovered,
            }
        ),
        flush=True,
    )
    failed = bool(uncovered)
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = pool.map(_compile_index, [which] * len(variants), [arch] * len(variants), range(len(variants)))
            for row in rows:
                failed |= not row["ok"]
                print(json.dumps(row), flush=True)
    else:
        target = GPUTarget("cuda", arch, 32)
        for v in variants:
            row = compile_variant(v, target)
            failed |= not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
