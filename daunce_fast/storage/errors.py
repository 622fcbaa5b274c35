"""Exceptions raised by daunce_fast.storage."""
from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by daunce_fast.storage."""


class CorruptFileError(StorageError, ValueError):
    """The file is not a valid safetensors file; the message names what is wrong (and the file)."""


class IncompleteFileError(StorageError):
    """The file (or a shard of a sharded store) was never finished: its writer was interrupted
    (crash, kill, exception) or is still running. Reopen it with ``create(..., resume=True)``."""


class LayoutMismatchError(StorageError, ValueError):
    """``create(..., resume=True)`` found a partial file whose layout (names, shapes, dtypes,
    metadata) differs from the one requested; or a sharded index differs from the one requested."""


class FileLockedError(StorageError):
    """Another process (or another open writer) is writing the same partial file."""
