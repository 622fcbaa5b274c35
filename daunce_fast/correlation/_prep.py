"""Input handling shared by the correlation backends.

``Source`` wraps one [K, n] loss matrix (numpy array or memmap, torch tensor on CPU or CUDA, cupy
array through DLPack, a storage Reader / ShardedStore / path) and reads it in column tiles,
so a memory-mapped or sharded matrix is never loaded whole. Stored bfloat16 / float16 / float8
tensors are decoded exactly to float32 by ``storage.dtypes.decode_float32`` whatever the entry
point (path, Reader, ShardedStore, ShardedArray); unsigned 8/16-bit arrays whose stored dtype is
unknown (they may be raw bfloat16 / float8 bits) are refused with a TypeError rather than
correlated as integers. ``standardise_torch`` is the float64 standardisation of the torch-based
engines (torch, triton, cuda); the CPU engine uses the compiled kernels instead (C.colstats +
C.corr_standardise), with the same rule for constants.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .reference import is_constant

METHODS = ("pearson", "covariance")
NAN_POLICIES = ("raise", "propagate")
_PRECISIONS = {"fp32": "fp32", "float32": "fp32", "ieee": "fp32", "tf32": "tf32", "bf16": "bf16", "bfloat16": "bf16"}
OUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# stored codes decoded to float32 (numpy holds BF16 / F8 as raw bits); F32 / F64 / integers are read as they are
_DECODED = frozenset({"BF16", "F16", "F8_E4M3", "F8_E5M2", "F8_E8M0"})
_AS_STORED = frozenset({"F32", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64"})
_FP_TILE_BYTES = 16 << 20  # fingerprint(): columns hashed per tile (a fixed width, so digests are comparable)


def check_tile(tile) -> int | None:
    """``tile``: None (automatic) or a positive int (train columns per tile); ValueError otherwise."""
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or int(tile) < 1:
        raise ValueError(f"tile must be None or a positive int (train columns per tile), got {tile!r}")
    return int(tile)


def check_options(method: str, nan_policy: str, precision, tile=None) -> str | None:
    check_tile(tile)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if precision is None:
        return None
    p = _PRECISIONS.get(str(precision).lower())
    if p is None:
        raise ValueError(f"precision must be None, 'fp32', 'tf32' or 'bf16', got {precision!r}")
    return p


def out_torch_dtype(out_dtype) -> torch.dtype:
    name = str(out_dtype).replace("torch.", "")
    name = {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)
    if name not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {sorted(OUT_DTYPES)}, got {out_dtype!r}")
    return OUT_DTYPES[name]


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _is_storage(x) -> bool:
    if isinstance(x, (str, os.PathLike)):
        return True
    mod = type(x).__module__
    return mod.startswith("daunce_fast.storage")


class Source:
    """One [K, n] input matrix. ``kind``: 'numpy' | 'torch' | 'cupy' | 'storage'."""

    def __init__(self, x, name: str):
        self.name = name
        self._opened = None
        if isinstance(x, torch.Tensor):
            self.kind, self.data = "torch", x.detach()
        elif _is_cupy(x):
            self.kind, self.data = "cupy", torch.from_dlpack(x)  # zero copy, stays on its GPU
        elif _is_storage(x):
            from .. import storage

            self.kind = "storage"
            if isinstance(x, (str, os.PathLike)):
                x = self._opened = storage.open_any(x)
            if hasattr(x, "names"):  # Reader / ShardedStore: its only tensor
                names = list(x.names())
                if len(names) != 1:
                    raise ValueError(f"{name}: the store holds {len(names)} tensors {names}; pass the array itself, "
                                     f"e.g. reader[{names[0]!r}]" if names else f"{name}: the store holds no tensor")
                self.code = x.dtype_code(names[0])
                x = x[names[0]]
            # ShardedArray carries its code; a Reader's array view (reader[name]) may not
            self.code = getattr(x, "dtype_code", getattr(self, "code", None))
            self.data = x
            if self.code is not None and self.code not in _AS_STORED and self.code not in _DECODED:
                from ..storage.dtypes import decode_float32

                decode_float32(np.zeros(0, self.data.dtype), self.code)  # its TypeError names the code
                raise TypeError(f"{name}: stored dtype {self.code} is not a real numeric type")
        else:
            arr = np.asarray(x)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"{name}: expected a real numeric matrix, got dtype {arr.dtype}")
            self.kind, self.data, self.code = "numpy", arr, None
        if self.kind in ("numpy", "storage") and self.code is None and self.data.dtype in (np.uint8, np.uint16):
            raise TypeError(f"{name}: integer matrix of dtype {self.data.dtype} whose stored dtype is unknown (it may "
                            f"hold raw bfloat16 / float8 bits): decode it first (e.g. storage.dtypes.decode_float32(arr, "
                            f"code), or reader.torch(name)) or pass the path / Reader, which carry the dtype")
        if self.kind in ("torch", "cupy") and self.data.dtype in (torch.uint8, torch.uint16):
            raise TypeError(f"{name}: integer tensor of dtype {self.data.dtype} (possibly raw bfloat16 / float8 bits): "
                            f"convert it to a floating-point dtype first")
        shape = tuple(self.data.shape)
        if len(shape) != 2:
            raise ValueError(f"{name}: expected a 2-D [K models, n examples] matrix, got shape {shape}")
        self.K, self.n = int(shape[0]), int(shape[1])
        if self.kind in ("torch", "cupy") and self.data.dtype.is_complex:
            raise TypeError(f"{name}: complex input is not supported")

    @property
    def device(self) -> torch.device:
        if self.kind in ("torch", "cupy"):
            return self.data.device
        return torch.device("cpu")

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    # ------------------------------------------------------------------ reading
    def numpy_tile(self, j0: int, j1: int) -> np.ndarray:
        """Columns [j0, j1) as a numpy array (float32 or float64; a view when possible)."""
        if self.kind == "storage":
            blk = np.asarray(self.data[:, j0:j1])  # reads only these columns of the map / shards
            if self.code in _DECODED:
                from ..storage.dtypes import decode_float32

                blk = decode_float32(blk, self.code)
        elif self.kind == "numpy":
            blk = self.data[:, j0:j1]
        else:
            t = self.data[:, j0:j1]
            if t.dtype not in (torch.float32, torch.float64):
                t = t.to(torch.float32 if t.dtype.is_floating_point and t.element_size() < 4 else torch.float64)
            blk = t.cpu().numpy()
        if blk.dtype not in (np.float32, np.float64):
            blk = blk.astype(np.float32 if blk.dtype.kind == "f" and blk.dtype.itemsize < 4 else np.float64)
        return blk

    def torch_tile(self, j0: int, j1: int, device) -> torch.Tensor:
        """Columns [j0, j1) as a torch tensor on ``device`` (original float dtype when possible)."""
        if self.kind in ("torch", "cupy"):
            t = self.data[:, j0:j1]
        else:
            t = torch.from_numpy(np.ascontiguousarray(self.numpy_tile(j0, j1)))
        if not t.dtype.is_floating_point:
            t = t.to(torch.float64)
        elif t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            t = t.to(torch.float32)  # float8: widened exactly (torch cannot compute in it)
        return t.to(device, non_blocking=False)

    @property
    def needs_decoding(self) -> bool:
        """True when tiles are decoded (stored bfloat16 / float16 / float8) rather than sliced as views."""
        return self.kind == "storage" and self.code in _DECODED

    def fingerprint(self) -> str:
        """Content digest of the matrix as correlated: its shape and every value of its float tiles
        (numpy_tile), so the same values give the same digest through any entry point (array,
        tensor, path, Reader, sharded store). Streams fixed-width column tiles; the matrix is never
        loaded whole."""
        from ..storage.fingerprint import ContentHash

        h = ContentHash("daunce_fast.correlation.matrix/1").update_json([self.K, self.n])
        width = max(1, _FP_TILE_BYTES // (8 * max(self.K, 1)))
        for j0 in range(0, self.n, width):
            h.update_array(self.numpy_tile(j0, min(self.n, j0 + width)))
        return h.hexdigest()


def check_pair(train: Source, test: Source) -> None:
    if train.K != test.K:
        raise ValueError(f"train and test must have the same number of models K (rows): {train.K} vs {test.K}")
    if train.K < 2:
        raise ValueError(f"need at least K=2 models (rows) to correlate, got K={train.K}")


@dataclass
class TileStats:
    """Standardised tile plus what the driver needs to report."""

    z: object  # numpy or torch, [K, n]
    first_bad: int  # flat index j*K + k of the first non-finite entry (example-major), or -1
    constant: np.ndarray  # bool [n]
    overflow: int = -1  # first column (within the tile) whose finite values overflow float64 stats, or -1


def first_stats_overflow(x, mean, m2) -> int:
    """First column of x [K, n] whose values are all finite but whose mean or m2 is not (float64
    overflow, values near the float64 limit), or -1. numpy or torch arguments."""
    if isinstance(x, torch.Tensor):
        bad = ~(torch.isfinite(mean) & torch.isfinite(m2))
        if not bool(bad.any()):
            return -1
        hit = torch.nonzero(bad & torch.isfinite(x).all(0))
        return int(hit[0, 0]) if hit.numel() else -1
    bad = ~(np.isfinite(mean) & np.isfinite(m2))
    if not bad.any():
        return -1
    cols = np.nonzero(bad)[0]
    ok = np.isfinite(x[:, cols]).all(0)
    return int(cols[ok][0]) if ok.any() else -1


def first_nonfinite_torch(x: torch.Tensor) -> int:
    """j*K + k of the first non-finite entry of x [K, n] ordered by (example j, model k), or -1."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return -1
    flat = torch.nonzero(bad.T.reshape(-1))[0, 0]
    return int(flat)


def standardise_torch(x: torch.Tensor, pearson: bool, factor: float, dtype: torch.dtype) -> TileStats:
    """Float64 statistics and centring (then ``dtype``): pearson -> unit-norm columns times factor,
    NaN for constant ones; covariance -> centred columns times factor."""
    K = x.shape[0]
    bad = first_nonfinite_torch(x) if x.numel() else -1
    x64 = x.to(torch.float64)
    mean = x64.mean(0)
    xc = x64 - mean
    m2 = (xc * xc).sum(0)
    const = is_constant(mean, m2, K)
    if pearson:
        scale = factor / torch.sqrt(m2)
        scale = torch.where(const, torch.full_like(scale, float("nan")), scale)
    else:
        scale = torch.full_like(m2, factor)
    z = (xc * scale).to(dtype)
    return TileStats(z, bad, const.cpu().numpy(), first_stats_overflow(x, mean, m2))


def nonfinite_error(src: Source, flat: int, j0: int, value) -> ValueError:
    j, k = divmod(int(flat), src.K)
    return ValueError(f"{src.name} has a non-finite value {value} at model {k}, example {j0 + j} "
                      f"({src.name}[{k}, {j0 + j}]); pass nan_policy='propagate' to let NaN flow into the scores")


def overflow_error(name: str, column: int, values) -> ValueError:
    """The error for a column of finite values whose float64 mean or variance overflows."""
    peak = float(np.max(np.abs(np.asarray(values, dtype=np.float64)))) if np.size(values) else float("nan")
    return ValueError(f"{name} column {column} (example {column}) has finite values (largest magnitude {peak:.3g}) but "
                      f"its mean or variance overflows float64, so it cannot be standardised; rescale the matrix (e.g. "
                      f"divide it by its largest absolute value: Pearson scores do not change, covariances scale by "
                      f"the square of the factor)")
