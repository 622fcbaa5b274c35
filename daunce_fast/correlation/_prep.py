"""Input handling shared by the correlation backends.

``Source`` wraps one [K, n] loss matrix (numpy array or memmap, torch tensor on CPU or CUDA, cupy
array through DLPack, a storage Reader / ShardedStore / path) and reads it in column tiles,
so a memory-mapped or sharded matrix is never loaded whole. ``standardise_torch`` is the float64
standardisation of the torch-based engines (torch, triton, cuda); the CPU engine uses the
compiled kernels instead (C.colstats + C.corr_standardise), with the same rule for constants.
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


def check_options(method: str, nan_policy: str, precision) -> str | None:
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
            self.code = getattr(x, "dtype_code", getattr(self, "code", None))
            self.data = x
        else:
            arr = np.asarray(x)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"{name}: expected a real numeric matrix, got dtype {arr.dtype}")
            self.kind, self.data = "numpy", arr
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
            if self.code == "BF16":
                from ..storage import bf16_bits_to_float32

                blk = bf16_bits_to_float32(blk)
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
        return t.to(device, non_blocking=False)


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
    return TileStats(z, bad, const.cpu().numpy())


def nonfinite_error(src: Source, flat: int, j0: int, value) -> ValueError:
    j, k = divmod(int(flat), src.K)
    return ValueError(f"{src.name} has a non-finite value {value} at model {k}, example {j0 + j} "
                      f"({src.name}[{k}, {j0 + j}]); pass nan_policy='propagate' to let NaN flow into the scores")
