"""Streaming, memory-mapped safetensors storage (pure Python + numpy; torch imported lazily).

  create(path, tensors, metadata=None, resume=False) -> Writer   stream tiles into a new file
  open(path) -> Reader                                           memory-mapped, validated reader
  create_sharded(index_path, name, shape, dtype, ...) -> ShardedWriter
  open_sharded(index_path) -> ShardedArray                       one logical array over shards
  open_any(path)                                                 a file or an index, by content
  decode_float32(bits_or_values, code) -> float32 array         the one decoding of every dtype
  Reader.float32(name, index=...) / ShardedArray.float32(index=...)   a tile decoded to float32
  check_fits_in_memory(nbytes, what)                             InsufficientMemoryError if too big
  available_memory() -> int | None                               MemAvailable / cgroup headroom
  open_input(path, what="input") -> fd                           non-blocking, regular files only

Files are plain safetensors (safetensors.safe_open / load_file read them); bfloat16 and float8
appear in numpy as raw bits (uint16 / uint8), ``.torch(name)`` gives the real dtype and
``decode_float32`` / ``.float32(name, index)`` the exact float32 values.

Errors (all subclasses of StorageError): CorruptFileError (ValueError) and its ResourceLimitError
(a header beyond the budget at the top of format.py); IncompleteFileError; LayoutMismatchError;
FileLockedError; NotARegularFileError (ValueError: an input that is a directory, FIFO, socket or
device); UnreadableFileError (OSError: symlink loop, permission...); UnsafePathError (ValueError:
an output path that is a symlink, directory or other non-regular file); InsufficientMemoryError
(MemoryError). A missing input raises FileNotFoundError.

Inputs are opened non-blocking and must be regular files; outputs are never written through
symlinks (O_NOFOLLOW / O_EXCL, lstat before renames).
"""

from __future__ import annotations

from ._fs import open_input
from .dtypes import bf16_bits_to_float32, decode_float32, float32_to_bf16_bits
from .errors import (
    CorruptFileError,
    FileLockedError,
    IncompleteFileError,
    InsufficientMemoryError,
    LayoutMismatchError,
    NotARegularFileError,
    ResourceLimitError,
    StorageError,
    UnreadableFileError,
    UnsafePathError,
)
from .memory import available_memory, check_fits_in_memory
from .reader import Reader, open
from .sharded import ShardedArray, ShardedStore, ShardedWriter, create_sharded, open_sharded
from .stores import open_any
from .writer import Writer, create

__all__ = [
    "create",
    "open",
    "Writer",
    "Reader",
    "create_sharded",
    "open_sharded",
    "ShardedWriter",
    "ShardedArray",
    "ShardedStore",
    "open_any",
    "StorageError",
    "CorruptFileError",
    "IncompleteFileError",
    "LayoutMismatchError",
    "FileLockedError",
    "ResourceLimitError",
    "NotARegularFileError",
    "UnreadableFileError",
    "UnsafePathError",
    "InsufficientMemoryError",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
    "decode_float32",
    "check_fits_in_memory",
    "available_memory",
    "open_input",
]
