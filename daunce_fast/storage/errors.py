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


class ResourceLimitError(CorruptFileError):
    """The header is beyond a resource budget of this reader (too many tensors or metadata keys,
    too much metadata, names too long, JSON nested too deeply, more dimensions or elements than
    numpy can hold). The limits are the constants at the top of ``storage/format.py``; they are
    far above any real file, so a file hitting one is corrupt or hostile."""


class NotARegularFileError(StorageError, ValueError):
    """An input path is not a regular file (a directory, FIFO, socket or device): storage only
    reads regular files, so a FIFO never blocks and a device is never read. The message names
    the path and what it is."""


class UnreadableFileError(StorageError, OSError):
    """An input path could not be opened for a reason other than not existing: a symlink loop,
    permission denied, a path component that is not a directory... The message names the path
    and the reason; ``errno`` is the operating system's error number."""

    def __str__(self) -> str:  # OSError's own str would show "[Errno N] None" once errno is set
        return str(self.args[0]) if self.args else super().__str__()


class UnsafePathError(StorageError, ValueError):
    """An output path (the final file, ``X.partial``, its journal, a temporary file) is a
    symbolic link, a directory or something else this writer did not create. Storage never
    writes through a link: the link and its target are left untouched; remove it or pick
    another output path."""


class InsufficientMemoryError(StorageError, MemoryError):
    """Materialising a whole tensor (or a large selection of one) needs more memory than the
    machine has available (``MemAvailable`` of /proc/meminfo, or the cgroup's limit). Read it in
    tiles instead (``reader.read(name, index)``, ``reader.float32(name, index)``,
    or daunce_fast.correlation's column tiles of a [K, N] matrix)."""
