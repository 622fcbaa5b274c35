"""Streaming writer: a preallocated (sparse) safetensors file filled through a memory map.

Life of a file ``path``:
  create     ``path.partial`` is created (or reopened on resume) and locked; the full header is
             written first, marked incomplete ("daunce_fast.complete": "0"), padded so the data
             starts on a 4096-byte boundary; the file is extended to its final size with ftruncate
             (sparse: no disk or memory is used until tiles are written); ``path.partial.journal``
             holds the keys of completed tiles.
  write      ``writer[name]`` is a writable np.memmap; tiles may be assigned in any order.
  mark_done  flushes the data (fsync), then appends the key to the journal (fsync).
             (durable=False skips the fsyncs: still safe against a killed process, not power loss.)
             Callers that batch keys to save fsyncs ask ``journal_due()`` after each tile and mark
             the batch done when it says True (every ``journal_every`` seconds), so a killed run
             loses at most those last seconds of work whatever the batch size.
  close      rewrite the header in place at the same length with the marker "1", fsync (data and
             header), rename ``path.partial`` -> ``path`` (atomic), fsync the directory, delete the
             journal.
A crash at any point leaves either no ``path`` (only the partial + journal, resumable) or a
complete one: a reader never sees a half-written file under the final name.

Every file created or replaced here (``path.partial``, its journal and the journal's temporary
file, and ``path`` itself at the final rename) is opened with O_NOFOLLOW (O_EXCL when new) or
lstat-checked before a rename: a symlink, directory or other non-regular file planted at any of
them raises UnsafePathError and nothing is written through it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
import time

import numpy as np

from . import dtypes as _dt
from ._fs import open_output, refuse_link
from ._io import pwrite_box
from ._views import Sink, TensorQueries, array_view, torch_view
from .errors import CorruptFileError, FileLockedError, LayoutMismatchError, StorageError, UnsafePathError
from .format import check_metadata, encode_header, plan_layout, read_header
from .journal import Journal, check_key, fingerprint, fsync_dir

_LINUX = sys.platform.startswith("linux")
PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".partial.journal"


JOURNAL_EVERY = 5.0  # seconds: default of journal_every (what a killed batching caller may lose)


def create(
    path,
    tensors: dict,
    metadata: dict | None = None,
    resume: bool = False,
    durable: bool = True,
    preallocate: bool = False,
    journal_every: float = JOURNAL_EVERY,
) -> Writer:
    """Start (or, with ``resume=True``, continue) writing the safetensors file ``path``.

    tensors: {name: (shape, dtype)}; dtype a name ("float32", "bfloat16", "int64", ...), a
      safetensors code ("F32"), a numpy dtype or a torch dtype.
    metadata: {str: str}, stored in ``__metadata__``.
    resume: reopen ``path.partial`` if it exists with the same layout (names, shapes, dtypes and
      metadata), keeping its data and its done keys; a different layout raises LayoutMismatchError;
      no partial file starts afresh. resume=False discards any partial file and journal.
    durable: fsync data, journal and directory (mark_done, flush, close) so that completed tiles and
      the finished file survive an OS crash or power loss. durable=False skips every fsync: a
      killed *process* still loses nothing marked done (its writes sit in the kernel's page cache,
      in order), and writing costs what numpy.save to the page cache costs.
    preallocate: reserve the disk blocks now (posix_fallocate) instead of a sparse file: a full disk
      fails here with ENOSPC rather than later (through the memory map, as SIGBUS), and fresh
      tiles write ~30% faster; the file then occupies its full size on disk at once.
    journal_every: seconds after which ``journal_due()`` turns True (since the open or the last
      mark_done): callers batching mark_done calls commit their batch then.
    ``path`` must not be a symlink, directory or other non-regular file (UnsafePathError), nor may
    ``path.partial`` or its journal be one.
    Returns a Writer; ``writer[name]`` is a writable memory map of that tensor (bfloat16 and float8
    as their raw bits: uint16 / uint8; ``writer.torch(name)`` has the real dtype).
    """
    return Writer(path, tensors, metadata, resume, durable, preallocate, journal_every)


class Writer(TensorQueries):
    """A safetensors file being written: made by :func:`create` (which documents the arguments and
    holds their defaults) or by ShardedWriter.create_shard."""

    def __init__(
        self,
        path,
        tensors: dict,
        metadata: dict | None,
        resume: bool,
        durable: bool,
        preallocate: bool,
        journal_every: float,
    ):
        self.path = os.fspath(path)
        self.journal_every = float(journal_every)
        if not self.journal_every >= 0:
            raise ValueError(f"journal_every must be a number of seconds >= 0, got {journal_every!r}")
        self._last_mark = time.monotonic()
        refuse_link(self.path, "output file")  # before any work: a link or directory here is refused at close
        self.durable = bool(durable)
        self.preallocate = bool(preallocate)
        self.resumed = False
        self.partial_path = self.path + PARTIAL_SUFFIX
        self.journal_path = self.path + JOURNAL_SUFFIX
        layout = plan_layout(tensors)
        self._meta = check_metadata(metadata)
        self._layout = {t.name: t for t in layout}
        self._hdr = encode_header(layout, self._meta, complete=False)
        self._hlen = len(self._hdr) - 8
        self._total = layout[-1].end
        self._size = 8 + self._hlen + self._total
        self._fp = fingerprint(self._hdr)
        self._closed = True
        self._views: dict = {}
        self._sinks: list = []
        self._lock_fd = _lock(self.partial_path)
        self._fd: int | None = None
        self._mm: mmap.mmap | None = None
        self._journal: Journal | None = None
        try:
            self._fd = open_output(self.partial_path, os.O_RDWR, "partial file")
            if os.fstat(self._file).st_ino != os.fstat(self._lock_fd).st_ino:
                raise UnsafePathError(
                    f"{self.partial_path} was replaced while being opened: another process is "
                    f"changing it; retry, or choose another output path"
                )
            self.resumed = bool(resume) and self._reopen()
            if not self.resumed:
                self._fresh()
            if self.preallocate and self._total:
                os.posix_fallocate(self._file, 8 + self._hlen, self._total)  # keeps existing data
            self._journal = Journal.open(self.journal_path, self._fp, keep=self.resumed, sync=self.durable)
            self._mm = mmap.mmap(self._file, self._size, access=mmap.ACCESS_WRITE)
        except BaseException:
            self._release()
            raise
        self._closed = False

    # ---------------------------------------------------------------------------------- set-up
    def _reopen(self) -> bool:
        """Reuse the existing partial file; False when there is nothing usable to resume."""
        if os.fstat(self._file).st_size == 0:
            return False
        try:
            old = read_header(self._file, self.partial_path)
        except CorruptFileError:
            # Only a crash before the header was made durable leaves this; no key can have been
            # journaled yet (the journal starts after that fsync), so nothing is lost.
            return False
        problems = []
        have = {n: (t.dtype, t.shape) for n, t in old.tensors.items()}
        want = {n: (t.dtype, t.shape) for n, t in self._layout.items()}
        for n in sorted(set(have) | set(want)):
            if n not in have:
                problems.append(f"tensor {n!r} is new")
            elif n not in want:
                problems.append(f"tensor {n!r} is not requested")
            elif have[n] != want[n]:
                problems.append(
                    f"tensor {n!r} is {have[n][0]}{list(have[n][1])}, requested {want[n][0]}{list(want[n][1])}"
                )
        if old.user_metadata() != self._meta:
            problems.append(f"metadata differs: file has {old.user_metadata()}, requested {self._meta}")
        if not problems and (
            old.header_len != self._hlen or any(old.tensors[n].begin != t.begin for n, t in self._layout.items())
        ):
            problems.append("header written by another version of the writer (offsets differ)")
        if problems:
            raise LayoutMismatchError(
                f"cannot resume {self.partial_path}: its layout differs from the one "
                f"requested: " + "; ".join(problems) + ". Use resume=False to discard it, or pass the original layout."
            )
        if not old.complete:  # usual case; a crash between close's header rewrite and rename flips it back
            return True
        os.pwrite(self._file, self._hdr, 0)  # made durable by the next flush, like everything else
        return True

    def _fresh(self) -> None:
        refuse_link(self.journal_path, "journal")
        if os.path.exists(self.journal_path):
            os.remove(self.journal_path)
            if self.durable:  # the old keys must not outlive the data they describe
                fsync_dir(self.journal_path)
        os.ftruncate(self._file, 0)
        os.pwrite(self._file, self._hdr, 0)
        os.ftruncate(self._file, self._size)  # sparse preallocation
        # No fsync here: nothing refers to this file until the first mark_done, whose flush makes
        # header and size durable before any key is journaled (a power loss before that leaves at
        # worst an unreadable partial file, which resume discards).

    # ------------------------------------------------------------------------------- tensors
    def names(self) -> list[str]:
        return list(self._layout)

    def _info(self, name: str):
        try:
            return self._layout[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.path} (has {sorted(self._layout)})") from None

    def __getitem__(self, name: str) -> np.memmap:
        """Writable np.memmap of tensor ``name`` (bfloat16: uint16 raw bits, see dtypes.float32_to_bf16_bits)."""
        self._check_open()
        v = self._views.get(name)
        if v is None:
            info = self._info(name)
            v = self._views[name] = array_view(self._map, info, 8 + self._hlen, self.partial_path, "r+")
            if info.nbytes:
                # v is a MappedArray (array_view), which has the _st_sink slot
                v._st_sink = Sink(self._file, 8 + self._hlen + info.begin, info.shape, v.dtype)  # type: ignore[attr-defined]
                self._sinks.append(v._st_sink)  # type: ignore[attr-defined]
        return v

    def write(self, name: str, index, value) -> None:
        """``writer[name][index] = value`` with one pwrite per contiguous run (e.g. per row of a
        column tile) when ``index`` is a unit-step box of basic indices: no page faults, so fresh
        tiles go 2-3x faster than through the map. bfloat16 tensors accept floating values (rounded
        to bf16 bits here) as well as uint16 bits. Same durability rules as the map (mark_done/close)."""
        self._check_open()
        info = self._info(name)
        dt = _dt.numpy_dtype(info.dtype)
        value = np.asarray(value)
        if info.dtype == "BF16" and value.dtype.kind == "f":
            value = _dt.float32_to_bf16_bits(value.astype(np.float32, copy=False))
        elif _dt.is_raw_bits(info.dtype) and value.dtype != dt:
            raise TypeError(f"tensor {name!r} is {info.dtype}: write its raw bits as {dt}")
        if not pwrite_box(self._file, 8 + self._hlen + info.begin, info.shape, dt, index, value):
            self[name][index] = value

    def torch(self, name: str):
        """torch tensor sharing memory with ``writer[name]``, with the real dtype (bfloat16 included)."""
        return torch_view(self[name], self._info(name).dtype)

    def __contains__(self, name) -> bool:
        return name in self._layout

    def __iter__(self):
        return iter(self._layout)

    def keys(self):
        return self._layout.keys()

    # ---------------------------------------------------------------------------- durability
    def flush(self) -> None:
        """Write dirty pages to disk and wait (fsync; msync too off Linux); nothing to do when durable=False
        (the page cache already holds every write, safe from a crash of this process)."""
        self._check_open()
        self._sync()

    def _sync(self) -> None:
        if not self.durable:
            return
        if not _LINUX:
            # POSIX wants msync for stores through the map; on Linux the shared map's pages are
            # page-cache pages, tracked dirty, and fsync writes them (msync would be a second fsync).
            self._map.flush()
        os.fsync(self._file)

    def mark_done(self, key, *more) -> None:
        """Record that tile ``key`` (str or int; several may be given) is written: flushes the data
        first, then appends the key(s) to the journal durably. Survives a crash of this process."""
        self._check_open()
        keys = [check_key(k) for k in (key, *more)]
        if all(k in self._jrnl.keys for k in keys):
            return
        self.flush()
        self._jrnl.add(*keys)
        self._last_mark = time.monotonic()

    def journal_due(self) -> bool:
        """True once ``journal_every`` seconds have passed since this writer opened or last
        recorded keys (mark_done). A caller that batches mark_done calls (e.g. one per GiB) also
        marks its batch when this says True, so a killed run loses at most those seconds."""
        return time.monotonic() - self._last_mark >= self.journal_every

    def mark_requested(self) -> None:
        """Restart the ``journal_due`` clock now: for a caller that queues its mark_done calls to
        another thread, so the clock counts from the request, not from when that thread gets to it
        (else every tile while an fsync runs would look due and request another batch)."""
        self._last_mark = time.monotonic()

    def is_done(self, key) -> bool:
        """True when ``key`` was marked done (by this writer or by the run it resumed)."""
        if self._journal is None:
            raise StorageError(f"writer for {self.path} is closed")
        return check_key(key) in self._jrnl.keys

    def done_keys(self) -> set:
        """Keys marked done so far (a copy)."""
        if self._journal is None:
            raise StorageError(f"writer for {self.path} is closed")
        return set(self._jrnl.keys)

    # ---------------------------------------------------------------------------------- end
    def close(self) -> None:
        """Finish: mark complete in place, fsync, rename into ``path`` (atomic), remove the journal."""
        if self._closed:
            return
        os.pwrite(self._file, encode_header(list(self._layout.values()), self._meta, True, self._hlen), 0)
        # One fsync for data and header: whatever order they reach the disk in, the file is only
        # renamed to its final name after both are there (a partial file saying "complete" is
        # harmless: it is still a .partial, and resume marks it incomplete again).
        self._sync()
        refuse_link(self.path, "output file")  # rename would replace a link planted since create
        os.replace(self.partial_path, self.path)
        if self.durable:
            fsync_dir(self.path)
        self._jrnl.close()
        try:
            os.remove(self.journal_path)
        except FileNotFoundError:
            pass
        self._release()

    def abort(self, keep: bool = False) -> None:
        """Stop without completing. keep=False deletes the partial file and journal; keep=True
        flushes and leaves them for ``create(..., resume=True)`` (what an exception in ``with`` does)."""
        if self._closed:
            return
        if keep:
            self._sync()
        else:
            for p in (self.journal_path, self.partial_path):
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self):
        if self._closed:
            raise StorageError(f"writer for {self.path} is closed")

    # The open file, map and journal; each raises once released (typed, so nothing uses a None).
    @property
    def _file(self) -> int:
        if self._fd is None:
            raise StorageError(f"writer for {self.path} is closed")
        return self._fd

    @property
    def _map(self) -> mmap.mmap:
        if self._mm is None:
            raise StorageError(f"writer for {self.path} is closed")
        return self._mm

    @property
    def _jrnl(self) -> Journal:
        if self._journal is None:
            raise StorageError(f"writer for {self.path} is closed")
        return self._journal

    def _release(self) -> None:
        self._closed = True
        self._views = {}
        for sink in self._sinks:
            sink.fd = None  # arrays still alive keep working through the map
        if self._journal is not None:
            self._journal.close()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays handed out still use the mapping; it is unmapped when they go away
            self._mm = None
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(keep=True)

    def __del__(self):
        try:
            if not self._closed:
                self._release()  # leave the partial file for a resume; never complete implicitly
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("resumed" if self.resumed else "open")
        return f"<daunce_fast.storage.Writer {self.path!r} {state} tensors={list(self._layout)}>"


def _lock(partial: str) -> int:
    """Open-or-create ``partial`` and take an exclusive flock on it (a separate descriptor from the
    one the memory map duplicates, so the lock goes away at close even while arrays are alive)."""
    for _ in range(100):
        fd = open_output(partial, os.O_RDWR | os.O_CREAT, "partial file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileLockedError(f"{partial} is being written by another writer (process or open Writer)") from None
        try:
            same = os.stat(partial).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # it was renamed into place (or removed) while we waited: retry on the new file
    raise StorageError(f"could not lock {partial}")
