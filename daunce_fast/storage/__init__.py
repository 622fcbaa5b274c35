"""Streaming, memory-mapped safetensors storage (pure Python + numpy; torch imported lazily).

  create(path, tensors, metadata=None, resume=False) -> Writer   stream tiles into a new file
  open(path) -> Reader                                           memory-mapped, validated reader
  create_sharded(index_path, name, shape, dtype, ...) -> ShardedWriter
  open_sharded(index_path) -> ShardedArray                       one logical array over shards
  open_any(path)                                                 a file or an index, by content
  iter_column_tiles(x, tile)                                     (j0, j1, x[:, j0:j1]) of a [K, N]

Files are plain safetensors (safetensors.safe_open / load_file read them); bfloat16 and float8
appear in numpy as raw bits (uint16 / uint8), ``.torch(name)`` gives the real dtype.
"""
from __future__ import annotations

from .dtypes import bf16_bits_to_float32, float32_to_bf16_bits
from .errors import CorruptFileError, FileLockedError, IncompleteFileError, LayoutMismatchError, StorageError
from .reader import Reader, open
from .sharded import ShardedArray, ShardedStore, ShardedWriter, create_sharded, open_sharded
from .tiles import iter_column_tiles, open_any
from .writer import Writer, create

__all__ = [
    "create", "open", "Writer", "Reader",
    "create_sharded", "open_sharded", "ShardedWriter", "ShardedArray", "ShardedStore",
    "open_any", "iter_column_tiles",
    "StorageError", "CorruptFileError", "IncompleteFileError", "LayoutMismatchError", "FileLockedError",
    "bf16_bits_to_float32", "float32_to_bf16_bits",
]
