"""Sharded stores: one logical array split along one axis over several safetensors files.

The index (JSON, e.g. ``losses.index.json``) is written once, atomically, before any shard:

  {"format": "daunce_fast.sharded", "version": 1, "name": "losses", "dtype": "F32",
   "shape": [K, N], "axis": 0, "metadata": {str: str},
   "shards": [{"file": "losses-00000-of-00004.safetensors", "offset": 0, "size": 25}, ...]}

Shard i is an ordinary safetensors file (path relative to the index) holding one tensor ``name``
of the logical shape with ``size`` entries along ``axis``: logical[offset : offset + size]
along that axis. Each shard is written independently (``ShardedWriter.create_shard(i)``), so
ranks or processes write their own shard with the usual crash safety and resume.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import uuid

import numpy as np

from . import dtypes as _dt
from ._fs import create_fresh, open_input, refuse_link
from ._io import normalize as _normalize
from .errors import CorruptFileError, IncompleteFileError, LayoutMismatchError, ResourceLimitError, StorageError
from .format import MAX_HEADER, MAX_JSON_DEPTH, check_metadata, json_shape
from .journal import fsync_dir
from .memory import check_read
from .reader import Reader, selection_size
from .writer import JOURNAL_EVERY, PARTIAL_SUFFIX, Writer

FORMAT = "daunce_fast.sharded"
VERSION = 1


def _stem(index_path: str) -> str:
    base = os.path.basename(index_path)
    for suffix in (".index.json", ".json"):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def even_split(total: int, n: int) -> list[int]:
    """Sizes of ``n`` contiguous pieces of ``total`` items, as even as possible (the first
    ``total % n`` pieces one larger): the default shard sizes here, and how daunce_fast.distributed
    splits work over ranks."""
    q, r = divmod(int(total), int(n))
    return [q + (1 if i < r else 0) for i in range(int(n))]


def create_sharded(
    index_path,
    name: str,
    shape,
    dtype,
    axis: int = 0,
    shard_sizes=None,
    num_shards=None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> ShardedWriter:
    """Write (or re-use) the index of a sharded store and return its ShardedWriter.

    shape: logical shape; axis: the axis split across shards; shard_sizes: entries of each shard
    along ``axis`` (summing to shape[axis]) or num_shards for an even split (the first shards get
    one more when it does not divide). An existing identical index is kept (every rank may call
    this with the same arguments); a different one raises LayoutMismatchError unless overwrite=True.
    Shard files are named ``<stem>-00000-of-000NN.safetensors`` beside the index.
    """
    index_path = os.fspath(index_path)
    if not isinstance(name, str) or name == "__metadata__":
        raise ValueError(f"invalid tensor name {name!r}")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or not shape:
        raise ValueError(f"shape must be a non-empty tuple of non-negative ints, got {shape}")
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for shape {shape}")
    axis %= ndim
    code = _dt.to_code(dtype)
    meta = check_metadata(metadata)
    if shard_sizes is None:
        if num_shards is None or int(num_shards) < 1:
            raise ValueError("give shard_sizes (a list of sizes along axis) or num_shards >= 1")
        shard_sizes = even_split(shape[axis], int(num_shards))
    elif num_shards is not None and len(shard_sizes) != num_shards:
        raise ValueError(f"{len(shard_sizes)} shard_sizes but num_shards={num_shards}")
    shard_sizes = [int(s) for s in shard_sizes]
    if not shard_sizes or any(s < 0 for s in shard_sizes) or sum(shard_sizes) != shape[axis]:
        raise ValueError(f"shard_sizes {shard_sizes} must be non-negative and sum to shape[{axis}] = {shape[axis]}")
    n = len(shard_sizes)
    stem = _stem(index_path)
    shards, off = [], 0
    for i, s in enumerate(shard_sizes):
        shards.append({"file": f"{stem}-{i:05d}-of-{n:05d}.safetensors", "offset": off, "size": s})
        off += s
    index = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "dtype": code,
        "shape": list(shape),
        "axis": axis,
        "metadata": meta,
        "shards": shards,
    }
    if os.path.exists(index_path) and not overwrite:
        old = load_index(index_path)
        if old != index:
            diff = [k for k in index if old.get(k) != index[k]]
            raise LayoutMismatchError(
                f"{index_path} already exists with a different layout (differs in "
                f"{', '.join(diff)}); pass overwrite=True to replace it"
            )
    else:
        _write_json_atomic(index_path, index)
    return ShardedWriter(index_path, index)


def _write_json_atomic(path: str, obj: dict) -> None:
    """Write ``obj`` to a new temporary file (O_EXCL | O_NOFOLLOW) and rename it over ``path``;
    UnsafePathError when ``path`` is a symlink, directory or anything but a regular file."""
    refuse_link(path, "sharded index")
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"  # unique: ranks may race on the same index
    data = (json.dumps(obj, indent=1) + "\n").encode("utf-8")
    fd = create_fresh(tmp, "temporary index file")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    refuse_link(path, "sharded index")  # again, just before the rename (rename replaces a link, never its target)
    os.replace(tmp, path)
    fsync_dir(path)


def _read_index_bytes(index_path: str) -> bytes:
    fd = open_input(index_path, "sharded index")
    try:
        size = os.fstat(fd).st_size
        if size > MAX_HEADER:
            raise CorruptFileError(f"{index_path}: index of {size} bytes is larger than the {MAX_HEADER}-byte limit")
        chunks, got = [], 0
        while got <= size:  # one read past the size: a file growing while read is still bounded
            b = os.read(fd, min(1 << 24, MAX_HEADER + 1 - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
            if got > MAX_HEADER:
                raise CorruptFileError(f"{index_path}: index larger than the {MAX_HEADER}-byte limit")
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_index(index_path) -> dict:
    """Parse and validate a sharded index; CorruptFileError names what is wrong (ResourceLimitError
    for JSON nested deeper than format.MAX_JSON_DEPTH). Opened like any input: NotARegularFileError
    for a directory / FIFO / device, UnreadableFileError for a symlink loop, FileNotFoundError."""
    index_path = os.fspath(index_path)
    raw = _read_index_bytes(index_path)
    depth, _ = json_shape(raw)
    if depth > MAX_JSON_DEPTH:  # an index nests 3 levels ({"shards": [{...}]})
        raise ResourceLimitError(f"{index_path}: index JSON is nested too deeply ({depth} levels)")
    try:
        idx = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{index_path}: not a valid JSON index: {exc}") from None
    bad = lambda what: CorruptFileError(f"{index_path}: invalid sharded index: {what}")  # noqa: E731
    if not isinstance(idx, dict) or idx.get("format") != FORMAT:
        raise bad(f"'format' must be {FORMAT!r}")
    if idx.get("version") != VERSION:
        raise bad(f"unsupported version {idx.get('version')!r}")
    for key, typ in (
        ("name", str),
        ("dtype", str),
        ("shape", list),
        ("axis", int),
        ("shards", list),
        ("metadata", dict),
    ):
        if not isinstance(idx.get(key), typ) or isinstance(idx.get(key), bool):
            raise bad(f"{key!r} missing or not a {typ.__name__}")
    if idx["dtype"] not in _dt.CODES:
        raise bad(f"unknown dtype {idx['dtype']!r}")
    shape = idx["shape"]
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"shape {shape} must be non-negative ints")
    if not 0 <= idx["axis"] < len(shape):
        raise bad(f"axis {idx['axis']} out of range for shape {shape}")
    if not all(isinstance(v, str) for v in idx["metadata"].values()):
        raise bad("metadata values must be strings")
    pos = 0
    if not idx["shards"]:
        raise bad("no shards")
    for i, s in enumerate(idx["shards"]):
        if not (
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("offset", "size"))
        ):
            raise bad(f"shard {i} must have 'file' (str), 'offset' and 'size' (ints)")
        if s["offset"] != pos or s["size"] < 0:
            raise bad(f"shard {i} covers [{s['offset']}, {s['offset'] + s['size']}) but should start at {pos}")
        if os.path.isabs(s["file"]) or ".." in s["file"].replace("\\", "/").split("/"):
            raise bad(f"shard {i} file {s['file']!r} must be a plain path relative to the index")
        pos += s["size"]
    if pos != shape[idx["axis"]]:
        raise bad(f"shards cover {pos} entries along axis {idx['axis']}, shape says {shape[idx['axis']]}")
    return idx


class _Layout:
    """What the index says, with derived helpers (shared by writer and reader)."""

    def __init__(self, index_path: str, index: dict):
        self.index_path = index_path
        self.index = index
        self.name: str = index["name"]
        self.dtype_code: str = index["dtype"]
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.axis: int = index["axis"]
        self.metadata: dict[str, str] = dict(index["metadata"])
        self.shard_sizes = [s["size"] for s in index["shards"]]
        self.shard_offsets = [s["offset"] for s in index["shards"]]
        base = os.path.dirname(os.path.abspath(index_path))
        self.shard_files = [os.path.join(base, s["file"]) for s in index["shards"]]

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the data (uint16 bits for bfloat16)."""
        return _dt.numpy_dtype(self.dtype_code)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * _dt.itemsize(self.dtype_code)

    def shard_range(self, i: int) -> tuple[int, int]:
        """[start, stop) of shard ``i`` along the shard axis."""
        o = self.shard_offsets[i]
        return o, o + self.shard_sizes[i]

    def shard_shape(self, i: int) -> tuple[int, ...]:
        s = list(self.shape)
        s[self.axis] = self.shard_sizes[i]
        return tuple(s)


class ShardedWriter(_Layout):
    """Handle on a sharded store being written; create each shard with ``create_shard(i)``."""

    def create_shard(
        self,
        i: int,
        resume: bool = False,
        durable: bool = True,
        preallocate: bool = False,
        journal_every: float = JOURNAL_EVERY,
    ) -> Writer:
        """Writer of shard ``i``: ``w[name]`` is its [.., size_i, ..] block (logical rows
        shard_range(i) along the axis). Independent of other shards (any process may call it)."""
        if not 0 <= i < self.num_shards:
            raise IndexError(f"shard {i} out of range: the store has {self.num_shards}")
        start, stop = self.shard_range(i)
        meta = dict(self.metadata)
        meta.update(
            {
                "daunce_fast.shard": f"{i}/{self.num_shards}",
                "daunce_fast.shard_range": f"{start}:{stop}",
                "daunce_fast.shard_axis": str(self.axis),
                "daunce_fast.logical_shape": json.dumps(self.shape),
            }
        )
        return Writer(
            self.shard_files[i],
            {self.name: (self.shard_shape(i), self.dtype_code)},
            meta,
            resume,
            durable,
            preallocate,
            journal_every,
        )

    def complete_shards(self) -> list[int]:
        """Indices of shards whose final file exists."""
        return [i for i, p in enumerate(self.shard_files) if os.path.exists(p)]

    def open(self) -> ShardedArray:
        return open_sharded(self.index_path)

    def __repr__(self) -> str:
        return (
            f"<ShardedWriter {self.index_path!r} {self.name} {self.dtype_code}{list(self.shape)} axis={self.axis} "
            f"shards={self.num_shards}>"
        )


def open_sharded(index_path) -> ShardedArray:
    """Open a sharded store read-only as one logical array (every shard must be complete:
    a missing or unfinished shard raises IncompleteFileError naming it)."""
    index_path = os.fspath(index_path)
    return ShardedArray(index_path, load_index(index_path))


class ShardedArray(_Layout):
    """Read-only logical array over the shards. ``x[...]`` with ints, slices (any step) and
    Ellipsis returns a new numpy array, reading only the parts needed through the shards' memory
    maps; ``x.shard(i)`` is shard i's own read-only np.memmap; ``np.asarray(x)`` reads it all."""

    def __init__(self, index_path: str, index: dict):
        super().__init__(index_path, index)
        self._readers: list[Reader] = []
        try:
            for i, path in enumerate(self.shard_files):
                self._readers.append(self._open_shard(i, path))
        except BaseException:
            self.close()
            raise

    def _open_shard(self, i: int, path: str) -> Reader:
        who = f"shard {i} of {self.num_shards} ({path}) of {self.index_path}"
        if not os.path.exists(path):
            state = (
                "is still being written or was interrupted" if os.path.exists(path + PARTIAL_SUFFIX) else "is missing"
            )
            raise IncompleteFileError(f"{who} {state}")
        try:
            r = Reader(path)
        except IncompleteFileError as exc:
            raise IncompleteFileError(f"{who} is incomplete: {exc}") from None
        if (
            self.name not in r
            or r.shape(self.name) != self.shard_shape(i)
            or r.dtype_code(self.name) != self.dtype_code
        ):
            got = (r.dtype_code(self.name), r.shape(self.name)) if self.name in r else f"tensors {r.names()}"
            r.close()
            raise CorruptFileError(
                f"{who} does not hold {self.name!r} {self.dtype_code}{list(self.shard_shape(i))} (found {got})"
            )
        return r

    def shard(self, i: int) -> np.memmap:
        return self._readers[i][self.name]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        """The whole array (InsufficientMemoryError when it cannot fit in the available memory)."""
        return self[...]

    def float32(self, index=...) -> np.ndarray:
        """``self[index]`` (the whole array by default) decoded to float32 by ``dtypes.decode_float32``,
        like ``Reader.float32``; the selection is checked against the available memory first."""
        if self.dtype_code in _dt.NOT_DECODABLE:
            _dt.decode_float32(np.zeros(0, np.uint8), self.dtype_code)  # raises the TypeError
        n = selection_size(index, self.shape)
        check_read(n * (4 + _dt.itemsize(self.dtype_code)), f"reading {self._what(index)} as float32")
        out = _dt.decode_float32(self[index], self.dtype_code)
        return out if self.dtype_code != "F32" else np.require(out, requirements="W")

    def _what(self, index) -> str:
        part = "sharded array" if index is Ellipsis else "a selection of sharded array"
        return f"{part} {self.name!r} ({self.dtype_code}{list(self.shape)}) of {self.index_path}"

    def __getitem__(self, key) -> np.ndarray:
        """A new array of the selection (raw bits for BF16 / float8); InsufficientMemoryError when
        it cannot fit in the available memory (checked before anything is read)."""
        if not self._readers:
            raise StorageError(f"sharded store {self.index_path} is closed")
        check_read(selection_size(key, self.shape) * self.dtype.itemsize, f"reading {self._what(key)}")
        key = _normalize(key, self.shape)
        ax = self.axis
        k = key[ax]
        if not isinstance(k, slice):  # one index along the shard axis: one shard
            i = bisect.bisect_right(self.shard_offsets, k) - 1  # last shard starting at or before k: never empty
            local = key[:ax] + (k - self.shard_offsets[i],) + key[ax + 1 :]
            return self._readers[i].read(self.name, local)
        r = range(*k.indices(self.shape[ax]))
        flip = r.step < 0
        if flip:
            r = r[::-1]
        out_shape = tuple(len(range(*s.indices(d))) for s, d in zip(key, self.shape) if isinstance(s, slice))
        out_ax = sum(isinstance(s, slice) for s in key[:ax])
        out = np.empty(out_shape, dtype=self.dtype)
        for i in range(self.num_shards):
            lo, hi = self.shard_range(i)
            q0, q1 = bisect.bisect_left(r, lo), bisect.bisect_left(r, hi)
            if q0 >= q1:
                continue
            sub = r[q0:q1]
            local = key[:ax] + (slice(sub.start - lo, sub.stop - lo, sub.step),) + key[ax + 1 :]
            dst = (slice(None),) * out_ax + (slice(q0, q1),)
            out[dst] = self._readers[i].read(self.name, local)
        if flip:
            out = np.ascontiguousarray(np.flip(out, axis=out_ax))
        return out

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []

    def __enter__(self) -> ShardedArray:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ShardedArray {self.index_path!r} {self.name} {self.dtype_code}{list(self.shape)} axis={self.axis} "
            f"shards={self.num_shards}>"
        )


class ShardedStore:
    """Mapping-like view of a sharded store (what ``open_any`` returns for an index): ``store[name]``
    is the ShardedArray, like ``Reader[name]`` is a memmap."""

    def __init__(self, array: ShardedArray):
        self.array = array
        self.path = array.index_path
        self.metadata = array.metadata

    def names(self) -> list[str]:
        return [self.array.name]

    def keys(self):
        return self.names()

    def __contains__(self, name) -> bool:
        return name == self.array.name

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return 1

    def __getitem__(self, name: str) -> ShardedArray:
        if name != self.array.name:
            raise KeyError(f"no tensor {name!r} in {self.path} (has {self.names()})")
        return self.array

    def shape(self, name: str) -> tuple[int, ...]:
        return self[name].shape

    def dtype(self, name: str) -> np.dtype:
        return self[name].dtype

    def dtype_code(self, name: str) -> str:
        return self[name].dtype_code

    def close(self) -> None:
        self.array.close()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
