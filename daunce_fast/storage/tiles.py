"""Opening files or indexes alike, and reading [K, N] matrices by column tiles."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from . import dtypes as _dt
from ._fs import open_input
from .errors import StorageError
from .reader import Reader
from .sharded import FORMAT, ShardedArray, ShardedStore, open_sharded


def is_index(path) -> bool:
    """True when ``path`` is a sharded index (``*.json``, or a regular file starting with our
    index's JSON). Never blocks: a FIFO, directory or unreadable path is not an index (opening it
    as a file then raises the documented error)."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return True
    try:
        fd = open_input(path)
    except (OSError, StorageError):
        return False
    try:
        head = os.pread(fd, 64, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return head.lstrip().startswith(b'{') and f'"{FORMAT}"'.encode() in head


def open_any(path) -> Reader | ShardedStore:
    """Open a safetensors file (-> Reader) or a sharded index (-> ShardedStore). Both give
    ``obj[name]`` (a memmap or a ShardedArray), ``names()``, ``metadata``, ``shape(name)``,
    ``dtype(name)``, ``dtype_code(name)``, ``close()`` and ``with``."""
    if is_index(path):
        return ShardedStore(open_sharded(path))
    return Reader(path)


def _pick(store, name: str | None):
    names = store.names()
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{store.path} holds {len(names)} tensors {names}: say which with name=")
        name = names[0]
    return store[name], store.dtype_code(name)


def iter_column_tiles(x, tile: int, name: str | None = None, dtype=None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(j0, j1, block)`` with ``block = x[:, j0:j1]`` as a C-contiguous numpy array [K, j1 - j0],
    for j0 = 0, tile, 2 tile, ... (the last tile may be shorter).

    x: a 2-D array-like ([K, N]: numpy array or memmap, ShardedArray, anything with ``.shape``
    and basic slicing), a Reader / ShardedStore (then ``name`` picks the tensor; optional when it
    holds one), or a path to a safetensors file or a sharded index (opened here, closed at the end).
    Only the tile's columns are read. Stored bfloat16 and float8 (raw bits in numpy) are decoded
    to float32 by ``dtypes.decode_float32``; other dtypes come as stored. ``dtype`` converts every
    block (e.g. np.float64).
    """
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    opened = None
    code = None
    if isinstance(x, (str, os.PathLike)):
        x = opened = open_any(x)
    try:
        reader = rname = None
        if isinstance(x, (Reader, ShardedStore)):
            store = x
            x, code = _pick(x, name)
            if isinstance(store, Reader):  # pread the exact rows of each tile
                reader, rname = store, name or store.names()[0]
        elif isinstance(x, ShardedArray):
            code = x.dtype_code
        shape = tuple(x.shape)
        if len(shape) != 2:
            raise ValueError(f"iter_column_tiles needs a 2-D [K, N] array, got shape {shape}")
        n = shape[1]
        for j0 in range(0, n, tile):
            j1 = min(j0 + tile, n)
            block = reader.read(rname, (slice(None), slice(j0, j1))) if reader is not None else x[:, j0:j1]
            if not isinstance(block, np.ndarray):
                block = np.asarray(block)
            if code is not None and _dt.is_raw_bits(code):
                block = _dt.decode_float32(block, code)
            if dtype is not None:
                block = block.astype(dtype, copy=False)
            block = np.ascontiguousarray(block)
            if isinstance(block, np.memmap):  # a copy now; do not pretend it is backed by the file
                block = block.view(np.ndarray)
            yield j0, j1, block
    finally:
        if opened is not None:
            opened.close()
