"""Tile I/O with pread/pwrite: a unit-step box of a C-order tensor is a set of contiguous byte runs
(one per row of a column tile). Copying them with one system call each skips the per-page faults
of a memory map (and the map's read-around on cold reads), which on Linux is 2-3x faster for
fresh tiles. Boxes with many tiny runs fall back to the memory map."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np

MIN_RUN = 2048  # bytes; below this per-run syscalls cost more than page faults


def normalize(key, shape: tuple[int, ...]) -> tuple:
    """Basic-indexing key -> tuple of one non-negative int or slice per axis (IndexError/TypeError
    for anything else: advanced indexing is not supported here)."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ell = sum(k is Ellipsis for k in key)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ell:
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = len(shape) - (len(key) - 1)
        key = key[:at] + (slice(None),) * max(fill, 0) + key[at + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for a {len(shape)}-d array")
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, d in zip(key, shape):
        if isinstance(k, slice):
            out.append(k)
        elif isinstance(k, (bool, np.bool_)) or not hasattr(k, "__index__"):
            raise TypeError(f"only basic indexing (ints, slices, ...) is supported, got {type(k).__name__}")
        else:
            j = k.__index__()
            if not -d <= j < d:
                raise IndexError(f"index {j} is out of bounds for an axis of size {d}")
            out.append(j % d)
    return tuple(out)


def unit_box(key, shape):
    """(ranges [(a, b)] per axis, result shape) when ``key`` selects a unit-step box, else None."""
    key = normalize(key, shape)
    ranges, out_shape = [], []
    for k, d in zip(key, shape):
        if isinstance(k, slice):
            a, b, s = k.indices(d)
            n = len(range(a, b, s))
            if s != 1 and n > 1:
                return None
            a = a if n else 0
            ranges.append((a, a + n))
            out_shape.append(n)
        else:
            ranges.append((k, k + 1))
    return ranges, tuple(out_shape)


def runs(ranges, shape, itemsize):
    """(outer index ranges, run length in bytes, offset(outer) function) for a unit-step box."""
    nd = len(shape)
    m = nd - 1
    while m > 0 and ranges[m] == (0, shape[m]):
        m -= 1
    inner = math.prod(shape[m + 1 :])
    run = (ranges[m][1] - ranges[m][0]) * inner * itemsize
    strides = [math.prod(shape[i + 1 :]) * itemsize for i in range(nd)]
    base = ranges[m][0] * strides[m]

    def offset(outer):
        return base + sum(i * s for i, s in zip(outer, strides))

    return [range(a, b) for a, b in ranges[:m]], run, offset, m


def plan(key, shape, itemsize):
    """A pread/pwrite plan for ``key`` or None (use the memory map)."""
    if not shape:  # 0-d: nothing to gain
        normalize(key, shape)
        return None
    box = unit_box(key, shape)
    if box is None:
        return None
    ranges, out_shape = box
    if any(b == a for a, b in ranges):
        return None
    outer, run, offset, m = runs(ranges, shape, itemsize)
    if run < MIN_RUN and math.prod(len(r) for r in outer) > 1:
        return None
    return ranges, out_shape, outer, run, offset, m


def pread_box(fd: int, data_start: int, shape, dtype: np.dtype, key, out=None):
    """Read tensor[key] (C-order tensor of ``shape`` at ``data_start`` in ``fd``) into a new array
    (or ``out``); None when the key is not a suitable box."""
    p = plan(key, shape, dtype.itemsize)
    if p is None:
        return None
    ranges, out_shape, outer, run, offset, m = p
    if out is None or out.shape != out_shape or out.dtype != dtype or not out.flags.c_contiguous:
        out = np.empty(out_shape, dtype)
    full = out.reshape([b - a for a, b in ranges])  # unsqueezed view of out
    for idx in itertools.product(*[range(len(r)) for r in outer]):
        dst = full[idx] if idx else full
        buf = memoryview(dst.reshape(-1)).cast("B")
        pos = data_start + offset(tuple(r[i] for r, i in zip(outer, idx)))
        got = 0
        while got < run:
            n = os.preadv(fd, [buf[got:]], pos + got)
            if n <= 0:
                raise OSError(f"short read at byte {pos + got}")
            got += n
    return out


def pwrite_box(fd: int, data_start: int, shape, dtype: np.dtype, key, value) -> bool:
    """tensor[key] = value through pwrite; False when the key is not a suitable box."""
    p = plan(key, shape, dtype.itemsize)
    if p is None:
        return False
    ranges, out_shape, outer, run, offset, m = p
    v = np.asarray(value)
    if v.dtype != dtype:
        v = v.astype(dtype)  # the casts numpy assignment would do
    v = np.broadcast_to(v, out_shape).reshape([b - a for a, b in ranges])
    for idx in itertools.product(*[range(len(r)) for r in outer]):
        src = np.ascontiguousarray(v[idx] if idx else v)  # a row of a column tile: already contiguous
        buf = src.reshape(-1).data.cast("B")
        pos = data_start + offset(tuple(r[i] for r, i in zip(outer, idx)))
        done = 0
        while done < run:
            done += os.pwrite(fd, buf[done:], pos + done)
    return True
