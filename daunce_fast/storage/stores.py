"""Opening a safetensors file or a sharded index alike (by content, never blocking)."""

from __future__ import annotations

import os

from ._fs import open_input
from .errors import StorageError
from .reader import Reader
from .sharded import FORMAT, ShardedStore, open_sharded


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
    return head.lstrip().startswith(b"{") and f'"{FORMAT}"'.encode() in head


def open_any(path) -> Reader | ShardedStore:
    """Open a safetensors file (-> Reader) or a sharded index (-> ShardedStore). Both give
    ``obj[name]`` (a memmap or a ShardedArray), ``names()``, ``metadata``, ``shape(name)``,
    ``dtype(name)``, ``dtype_code(name)``, ``close()`` and ``with``."""
    if is_index(path):
        return ShardedStore(open_sharded(path))
    return Reader(path)
