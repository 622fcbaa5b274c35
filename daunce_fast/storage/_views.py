"""numpy and torch views of tensors inside one memory map of a whole file."""
from __future__ import annotations

import mmap

import numpy as np

from . import dtypes as _dt
from .format import TensorInfo


class MappedArray(np.memmap):
    """np.memmap over a shared map of the whole file. Its buffer is a memoryview of the map, so
    the map cannot be unmapped (closed) while any such array is alive: no dangling pointers."""

    def flush(self):
        mm = getattr(self, "_mmap", None)
        if mm is not None and not mm.closed:
            mm.flush()


def array_view(mm: mmap.mmap, info: TensorInfo, data_start: int, filename: str, mode: str) -> np.memmap:
    """An ``np.memmap`` (MappedArray) of ``info`` over ``mm`` (no copy, no extra mapping). Read-only when ``mm`` is."""
    dt = _dt.numpy_dtype(info.dtype)
    offset = data_start + info.begin
    if info.nbytes == 0:
        # np.ndarray refuses a buffer offset equal to its length; an empty tensor needs no storage.
        arr = np.ndarray.__new__(MappedArray, info.shape, dt)
        if mode == "r":
            arr.flags.writeable = False
    else:
        # np.frombuffer keeps a memoryview (a buffer export) as the base, so mm.close() refuses
        # (BufferError) while the array lives instead of unmapping memory under it; np.ndarray(buffer=mm)
        # would keep no export and let a close leave the array dangling.
        flat = np.frombuffer(mm, dtype=dt, count=info.nbytes // dt.itemsize, offset=offset)
        arr = flat.reshape(info.shape).view(MappedArray)
    # np.memmap's own bookkeeping, so slices keep the map and arr.flush() reaches it.
    arr._mmap = mm if info.nbytes else None
    arr.filename = filename
    arr.offset = offset
    arr.mode = mode
    return arr


def torch_view(arr: np.ndarray, code: str):
    """torch tensor sharing memory with the writable array ``arr`` and carrying the real dtype."""
    import torch

    t = torch.from_numpy(np.ndarray(arr.shape, arr.dtype, buffer=arr) if arr.size else np.asarray(arr))
    if _dt.is_raw_bits(code):
        t = t.view(_dt.torch_dtype(code))
    return t
