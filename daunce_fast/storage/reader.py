"""Memory-mapped reader of safetensors files (ours, or any other writer's)."""

from __future__ import annotations

import mmap
import os

import numpy as np

from . import dtypes as _dt
from ._fs import open_input
from ._io import normalize, pread_box
from ._views import TensorQueries, array_view, torch_view
from .errors import IncompleteFileError, StorageError
from .format import Header, read_header
from .memory import check_read
from .writer import JOURNAL_SUFFIX, PARTIAL_SUFFIX

_ADVICE = {
    "normal": "MADV_NORMAL",
    "random": "MADV_RANDOM",
    "sequential": "MADV_SEQUENTIAL",
    "willneed": "MADV_WILLNEED",
}


def open(path, advice: str | None = None) -> Reader:
    """Open the safetensors file ``path`` read-only, memory-mapped.

    advice: an madvise hint for the map: "random" stops the kernel reading ~128 KiB around every
    page fault (column tiles through ``reader[name][:, j0:j1]`` on a cold cache otherwise read
    most of the file), "sequential" for whole-file scans. ``reader.read(name, index)`` needs no hint.

    Validates the header (CorruptFileError naming the defect; ResourceLimitError, a subclass, for a
    header beyond the budget in format.py); a ``.partial`` file, a file whose header says
    incomplete, or a ``path`` whose writer never finished (only ``path.partial`` exists) raises
    IncompleteFileError. The file is opened non-blocking: a directory, FIFO, socket or device raises
    NotARegularFileError, a symlink loop or permission error UnreadableFileError, a missing file
    FileNotFoundError. Nothing but the header is read until tensors are touched.
    """
    return Reader(path, advice)


class Reader(TensorQueries):
    def __init__(self, path, advice: str | None = None):
        self.path = os.fspath(path)
        if advice is not None and advice not in _ADVICE:
            raise ValueError(f"advice must be one of {sorted(_ADVICE)}, got {advice!r}")
        if self.path.endswith(PARTIAL_SUFFIX):
            raise IncompleteFileError(
                f"{self.path} is a partial file (its writer has not finished); resume it "
                f"with create(..., resume=True) or open the final file"
            )
        try:
            fd = open_input(self.path, "safetensors file")
        except FileNotFoundError:
            if os.path.lexists(self.path + PARTIAL_SUFFIX):
                raise IncompleteFileError(
                    f"{self.path} does not exist yet: only {self.path + PARTIAL_SUFFIX} does (its writer was "
                    f"interrupted or is still running; resume with create(..., resume=True))"
                ) from None
            raise
        self._mm = None
        self._views: dict = {}
        try:
            self.header: Header = read_header(fd, self.path)
            if not self.header.complete:
                journal = (
                    " (a journal of done tiles is beside it)" if os.path.exists(self.path + JOURNAL_SUFFIX) else ""
                )
                raise IncompleteFileError(
                    f"{self.path}: header marks the file incomplete: its writer never closed it{journal}"
                )
            self._mm = mmap.mmap(fd, self.header.file_size, access=mmap.ACCESS_READ)
            if advice is not None:
                flag = getattr(mmap, _ADVICE[advice], None)
                if flag is not None:  # not every platform has every hint
                    self._mm.madvise(flag)
            self._fd = fd  # kept for the copy-on-write maps of torch()
        except BaseException:
            os.close(fd)
            raise
        self.metadata: dict[str, str] = self.header.user_metadata()

    # ---------------------------------------------------------------------------------- queries
    def names(self) -> list[str]:
        """Tensor names in file (offset) order."""
        return list(self.header.tensors)

    def keys(self):
        return self.header.tensors.keys()

    def __contains__(self, name) -> bool:
        return name in self.header.tensors

    def __iter__(self):
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    @property
    def raw_metadata(self) -> dict[str, str] | None:
        """``__metadata__`` exactly as stored (completion marker included; None when absent)."""
        return self.header.metadata

    def _info(self, name: str):
        try:
            return self.header.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.path} (has {self.names()})") from None

    # ---------------------------------------------------------------------------------- data
    def __getitem__(self, name: str) -> np.memmap:
        """Read-only np.memmap of tensor ``name``: no data is read until it is indexed.
        bfloat16 / float8 tensors come as their raw bits (uint16 / uint8); see ``torch(name)``."""
        mm = self._check_open()
        v = self._views.get(name)
        if v is None:
            v = self._views[name] = array_view(mm, self._info(name), self.header.data_start, self.path, "r")
        return v

    def torch(self, name: str):
        """torch tensor of ``name`` without a copy, with the real dtype (bfloat16 included).

        Each call maps the tensor's pages privately (copy-on-write): writable for torch (no warning
        about non-writable arrays), sharing the page cache with the file until written; writes stay
        in that tensor and never reach the file or other views.
        """
        self._check_open()
        info = self._info(name)
        if info.nbytes == 0:
            return torch_view(self[name].copy(), info.dtype)
        start = self.header.data_start + info.begin
        base = start - start % mmap.ALLOCATIONGRANULARITY
        # Its own private map of just this tensor's pages: independent of other torch() calls.
        cow = mmap.mmap(self._fd, start + info.nbytes - base, access=mmap.ACCESS_COPY, offset=base)
        shifted = type(info)(info.name, info.dtype, info.shape, 0, info.nbytes)
        arr = array_view(cow, shifted, start - base, self.path, "c")
        return torch_view(arr, info.dtype)

    def read(self, name: str, index=...) -> np.ndarray:
        """``np.array(reader[name][index])`` (basic indexing), read with one pread per contiguous
        run (e.g. per row of a column tile) when the index is a unit-step box: exactly the bytes
        needed, no page faults, no memory-map read-around. Returns a new, writable array (raw bits
        for BF16 / float8, like ``reader[name]``). A selection larger than the available memory
        (the whole tensor by default) raises InsufficientMemoryError before anything is read."""
        self._check_open()
        info = self._info(name)
        dt = _dt.numpy_dtype(info.dtype)
        check_read(selection_size(index, info.shape) * dt.itemsize, f"reading {self._what(name, index)}")
        out = pread_box(self._fd, self.header.data_start + info.begin, info.shape, dt, index)
        return out if out is not None else np.array(self[name][index])

    def float32(self, name: str, index=...) -> np.ndarray:
        """``reader[name][index]`` (basic indexing; the whole tensor by default) decoded to a new
        float32 array by ``dtypes.decode_float32``: exact for BF16, F16, F8_*, F32; rounded for F64
        and wide integers; TypeError for BOOL / C64. Reads only the selection (one pread per
        contiguous run, as ``read``), e.g. a column tile ``(slice(None), slice(j0, j1))``; checks
        the selection (stored bytes + float32 result) against the available memory first
        (InsufficientMemoryError)."""
        self._check_open()
        info = self._info(name)
        if info.dtype in _dt.NOT_DECODABLE:
            _dt.decode_float32(np.zeros(0, np.uint8), info.dtype)  # raises the TypeError
        n = selection_size(index, info.shape)
        check_read(n * (4 + _dt.itemsize(info.dtype)), f"reading {self._what(name, index)} as float32")
        out = _dt.decode_float32(self.read(name, index), info.dtype)
        return out if info.dtype != "F32" else np.require(out, requirements="W")

    def _what(self, name: str, index) -> str:
        info = self._info(name)
        part = "tensor" if index is Ellipsis else "a selection of tensor"
        return f"{part} {name!r} ({info.dtype}{list(info.shape)}) of {self.path}"

    # ---------------------------------------------------------------------------------- end
    def close(self) -> None:
        """Drop this reader's maps. Arrays already handed out stay valid (their mapping lives on
        until they are garbage collected)."""
        self._views = {}
        for attr in ("_mm",):
            mm = getattr(self, attr, None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass
                setattr(self, attr, None)
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)
            self._fd = -1  # closed: _check_open() refuses every use before it is reached

    @property
    def closed(self) -> bool:
        return self._mm is None

    def _check_open(self) -> mmap.mmap:
        """The map while open; StorageError once closed."""
        if self._mm is None:
            raise StorageError(f"reader of {self.path} is closed")
        return self._mm

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<daunce_fast.storage.Reader {self.path!r} tensors={self.names()}>"


def selection_size(index, shape) -> int:
    """Number of elements of ``array_of_shape[index]`` for a basic index (exact Python int)."""
    n = 1
    for k, d in zip(normalize(index, shape), shape):
        if isinstance(k, slice):
            n *= len(range(*k.indices(d)))
    return n
