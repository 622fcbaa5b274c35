"""Append-only journal of completed tile keys, kept beside a partial file.

Line 1: ``daunce_fast.journal 1 <sha256 of the partial file's header>``: ties the journal to one
layout, so a journal left over from another job is ignored, never trusted.
Then one line per key: ``<crc32 hex> <JSON of the key>``. A torn or garbled line (a crash in the
middle of an append) fails its checksum and is skipped: at worst that tile is redone.
Keys are str or int (JSON keeps "1" and 1 apart).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import zlib

from ._fs import O_NONBLOCK, create_fresh, open_output, refuse_link
from .errors import StorageError

MAGIC = "daunce_fast.journal 1"


def fingerprint(header_bytes: bytes) -> str:
    return hashlib.sha256(header_bytes).hexdigest()


def check_key(key):
    """A tile key as stored: str, or int (numpy integers become int); anything else is a TypeError."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or not hasattr(key, "__index__"):
        raise TypeError(f"tile keys must be str or int, got {type(key).__name__}: {key!r}")
    return operator.index(key)


def _encode(key) -> bytes:
    body = json.dumps(key, ensure_ascii=True)
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


class Journal:
    def __init__(self, path: str, fp: str, keys: set, fd: int, sync: bool = True, new: bool = False):
        self.sync = sync
        self._dir_pending = new and sync  # the journal's directory entry is made durable at the first add
        self.path = path
        self.fp = fp
        self.keys = keys
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str, fp: str, keep: bool, sync: bool = True) -> Journal:
        """Open (keep=True: reuse the keys of a journal with the same fingerprint) or start afresh."""
        keys: set = set()
        refuse_link(path, "journal")  # a link, directory or FIFO here is refused, never followed
        if keep and os.path.exists(path):
            keys = cls.load(path, fp)
            if keys is None:  # another layout's journal: worthless
                keys = set()
                keep = False
        if keep and os.path.exists(path):
            fd = open_output(path, os.O_WRONLY | os.O_APPEND, "journal")
            # A torn final line (no newline) would glue onto the next record: start on a fresh line.
            size = os.fstat(fd).st_size
            if size and _last_byte(path, size) != b"\n":  # (path checked above: regular, not a link)
                os.write(fd, b"\n")
        else:
            tmp = path + ".tmp"
            fd = create_fresh(tmp, "temporary journal file")
            os.write(fd, f"{MAGIC} {fp}\n".encode())
            os.close(fd)
            refuse_link(path, "journal")
            os.replace(tmp, path)  # never a journal without its first line
            fd = open_output(path, os.O_WRONLY | os.O_APPEND, "journal")
            return cls(path, fp, keys, fd, sync, new=True)
        return cls(path, fp, keys, fd, sync)

    @staticmethod
    def load(path: str, fp: str | None = None):
        """Keys recorded in ``path``; None when its fingerprint is not ``fp`` (or the file is not a journal)."""
        fd = open_output(path, os.O_RDONLY | O_NONBLOCK, "journal")  # no link, no FIFO
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        first = lines[0].decode("ascii", "replace").split(" ")
        if len(first) != 3 or " ".join(first[:2]) != MAGIC or (fp is not None and first[2] != fp):
            return None
        keys = set()
        for line in lines[1:]:
            try:
                crc, body = line.split(b" ", 1)
                if int(crc, 16) != zlib.crc32(body):
                    continue
                key = json.loads(body)
            except ValueError:
                continue
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                keys.add(key)
        return keys

    def add(self, *keys) -> None:
        """Record ``keys`` (durably: one fsync, unless sync=False) and remember them."""
        new = [k for k in dict.fromkeys(check_key(k) for k in keys) if k not in self.keys]
        if not new:
            return
        fd = self._fd
        if fd is None:
            raise StorageError(f"journal {self.path} is closed")
        data = memoryview(b"".join(_encode(k) for k in new))
        while data:
            data = data[os.write(fd, data) :]
        if self.sync:
            os.fsync(fd)
            if self._dir_pending:
                fsync_dir(self.path)
                self._dir_pending = False
        self.keys.update(new)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _last_byte(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def fsync_dir(path: str) -> None:
    """Make a rename / creation in the directory of ``path`` durable (best effort off Linux)."""
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
