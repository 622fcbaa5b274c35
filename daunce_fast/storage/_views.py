"""numpy and torch views of tensors inside one memory map of a whole file."""
from __future__ import annotations

import mmap

import numpy as np

from . import dtypes as _dt
from .format import TensorInfo


def array_view(mm: mmap.mmap, info: TensorInfo, data_start: int, filename: str, mode: str) -> np.memmap:
    """An ``np.memmap`` of ``info`` over ``mm`` (no copy, no extra mapping). Read-only when ``mm`` is."""
    dt = _dt.numpy_dtype(info.dtype)
    offset = data_start + info.begin
    if info.nbytes == 0:
        # np.ndarray refuses a buffer offset equal to its length; an empty tensor needs no storage.
        arr = np.ndarray.__new__(np.memmap, info.shape, dt)
        if mode == "r":
            arr.flags.writeable = False
    else:
        arr = np.ndarray.__new__(np.memmap, info.shape, dt, buffer=mm, offset=offset, order="C")
    # np.memmap's own bookkeeping, so arr.flush() and slices behave like any memmap.
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
