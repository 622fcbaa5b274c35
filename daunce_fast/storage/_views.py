"""numpy and torch views of tensors inside one memory map of a whole file."""

from __future__ import annotations

import mmap

import numpy as np

from . import dtypes as _dt
from ._io import pwrite_box
from .format import TensorInfo


class Sink:
    """Where a writer's top-level tensor view sends assignments: pwrite to the open file."""

    __slots__ = ("fd", "start", "shape", "dtype")

    def __init__(self, fd, start, shape, dtype):
        self.fd, self.start, self.shape, self.dtype = fd, start, shape, dtype

    def write(self, key, value) -> bool:
        if self.fd is None:  # writer closed: the map still works
            return False
        return pwrite_box(self.fd, self.start, self.shape, self.dtype, key, value)


class MappedArray(np.memmap):
    """np.memmap over a shared map of the whole file. Its buffer is a memoryview of the map, so
    the map cannot be unmapped (closed) while any such array is alive: no dangling pointers.

    On a writer's tensor (not on slices of it), ``arr[box] = value`` for a unit-step box of basic
    indices goes through pwrite, one call per contiguous run: the same bytes land in the same page
    cache as through the map, without a page fault per 4 KiB (2-3x faster for fresh tiles)."""

    _st_sink = None
    # The safetensors code of the stored bits ("BF16", "F8_E4M3", ...): numpy sees BF16/F8 as raw
    # uint16/uint8, so readers of this array (correlation's Source) decode through it. Slices keep it.
    dtype_code: str | None = None

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        code = getattr(obj, "dtype_code", None)
        # keep the code only while the element type is still the stored one (not after a .view(...))
        self.dtype_code = code if code is not None and getattr(obj, "dtype", None) == self.dtype else None

    def __setitem__(self, key, value):
        sink = self._st_sink
        if sink is not None and not (isinstance(value, np.ndarray) and np.may_share_memory(value, self)):
            try:
                if sink.write(key, value):
                    return
            except (TypeError, IndexError, ValueError):
                pass  # raised before any byte is written: numpy handles it (or raises its own error)
        super().__setitem__(key, value)

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
    arr.dtype_code = info.dtype
    return arr


def torch_view(arr: np.ndarray, code: str):
    """torch tensor sharing memory with the writable array ``arr`` and carrying the real dtype."""
    import torch

    t = torch.from_numpy(np.ndarray(arr.shape, arr.dtype, buffer=arr) if arr.size else np.asarray(arr))
    if _dt.is_raw_bits(code):
        t = t.view(_dt.torch_dtype(code))
    return t


class TensorQueries:
    """``shape``, ``dtype`` and ``dtype_code`` of a tensor by name, for any class with ``_info(name)``
    (the Reader and the Writer)."""

    def _info(self, name: str) -> TensorInfo:  # provided by each subclass
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype of ``obj[name]`` (uint16 for bfloat16, uint8 for float8)."""
        return _dt.numpy_dtype(self._info(name).dtype)

    def dtype_code(self, name: str) -> str:
        """safetensors dtype code ("F32", "BF16", ...)."""
        return self._info(name).dtype
