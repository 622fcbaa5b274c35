"""The one reader of [K, n] loss matrices (row = model, column = example) for correlation, the
rank-sharded correlation (correlation.sharded) and the ``daunce-fast score`` command.

``Source`` wraps one matrix (numpy array or memmap, torch tensor on CPU or CUDA, cupy array through
DLPack, a storage Reader / ShardedStore / path to a safetensors file, sharded index or ``.npy``
file, a reader's array view) and reads it in column tiles, so a memory-mapped or sharded matrix is
never loaded whole. Stored bfloat16 / float16 / float8 tensors are decoded exactly to float32 by
``storage.dtypes.decode_float32`` whatever the entry point (path, Reader, ShardedStore,
ShardedArray, a reader view carrying its ``dtype_code``); unsigned 8/16-bit arrays whose stored
dtype is unknown (they may be raw bfloat16 / float8 bits) are refused with a TypeError rather than
correlated as integers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# stored codes decoded to float32 (numpy holds BF16 / F8 as raw bits); F32 / F64 / integers are read as they are
_DECODED = frozenset({"BF16", "F16", "F8_E4M3", "F8_E5M2", "F8_E8M0"})
_AS_STORED = frozenset({"F32", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64"})
_FP_TILE_BYTES = 16 << 20  # fingerprint(): columns hashed per tile (a fixed width, so digests are comparable)


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _is_storage(x) -> bool:
    if isinstance(x, (str, os.PathLike)):
        return True
    mod = type(x).__module__
    return mod.startswith("daunce_fast.storage")


class Source:
    """One [K, n] input matrix named ``name`` in errors ("train", "test", or a path).

    ``kind``: 'numpy' | 'torch' | 'cupy' | 'storage'; ``data`` the matrix as given (a torch view for
    cupy); ``code`` the stored safetensors dtype code for storage inputs (None otherwise); ``K``,
    ``n`` its shape. ``tensor`` picks the tensor of a store (a path, Reader or ShardedStore) that
    holds several (KeyError naming the ones it holds when absent); without it the store must hold
    exactly one (``tensor`` is ignored for inputs that are not stores). A path ending in ``.npy``
    is memory-mapped with numpy (no pickles). A Source given as ``x`` is read as it is (same data,
    renamed ``name``), and closing the new one leaves the given one open. Call ``close()`` to
    release a store opened here from a path (done here when the input is refused).
    """

    def __init__(self, x, name: str, tensor: str | None = None):
        self.name = name
        self._opened = None
        if isinstance(x, Source):
            self.__dict__.update({k: v for k, v in vars(x).items() if k not in ("name", "_opened")})
            return
        try:
            self._wrap(x, name, tensor)
        except BaseException:
            self.close()
            raise

    def _wrap(self, x, name: str, tensor: str | None) -> None:
        if isinstance(x, (str, os.PathLike)) and os.fspath(x).endswith(".npy"):
            x = np.load(x, mmap_mode="r", allow_pickle=False)
        if isinstance(x, torch.Tensor):
            self.kind, self.data = "torch", x.detach()
        elif _is_cupy(x):
            self.kind, self.data = "cupy", torch.from_dlpack(x)  # zero copy, stays on its GPU
        elif _is_storage(x):
            from .. import storage

            self.kind = "storage"
            if isinstance(x, (str, os.PathLike)):
                x = self._opened = storage.open_any(x)
            if hasattr(x, "names"):  # Reader / ShardedStore: the chosen tensor, or its only one
                names = list(x.names())
                if tensor is not None:
                    if tensor not in names:
                        raise KeyError(
                            f"{name}: the store has no tensor {tensor!r}; it holds "
                            f"{', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''}"
                        )
                elif len(names) != 1:
                    raise ValueError(
                        f"{name}: the store holds {len(names)} tensors {names}; pass the array itself, "
                        f"e.g. reader[{names[0]!r}]"
                        if names
                        else f"{name}: the store holds no tensor"
                    )
                else:
                    tensor = names[0]
                self.code = x.dtype_code(tensor)
                x = x[tensor]
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
            raise TypeError(
                f"{name}: integer matrix of dtype {self.data.dtype} whose stored dtype is unknown (it may "
                f"hold raw bfloat16 / float8 bits): decode it first (e.g. storage.dtypes.decode_float32(arr, "
                f"code), or reader.torch(name)) or pass the path / Reader, which carry the dtype"
            )
        if self.kind in ("torch", "cupy") and self.data.dtype in (torch.uint8, torch.uint16):
            raise TypeError(
                f"{name}: integer tensor of dtype {self.data.dtype} (possibly raw bfloat16 / float8 bits): "
                f"convert it to a floating-point dtype first"
            )
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
    """ValueError unless train and test have the same K >= 2 models (rows)."""
    if train.K != test.K:
        raise ValueError(f"train and test must have the same number of models K (rows): {train.K} vs {test.K}")
    if train.K < 2:
        raise ValueError(f"need at least K=2 models (rows) to correlate, got K={train.K}")
