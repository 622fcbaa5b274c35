"""The safetensors container: header encoding for the streaming writer, and a strict parser.

File layout (docs/storage-format.md#file-layout):
  bytes 0-7     header length N, little-endian u64, N <= 100,000,000
  next N bytes  UTF-8 JSON object, space padded: {"__metadata__": {str: str}, name: {"dtype", "shape",
                "data_offsets": [begin, end]}, ...}; offsets relative to the data start 8 + N
  data          tensors back to back, tiling [0, total) exactly; file size == 8 + N + total

The writer pads N so that 8 + N is a multiple of 4096 (page-aligned data) and keeps a completion
marker in ``__metadata__`` ("daunce_fast.complete": "0" while writing, "1" once closed) that other
readers ignore; flipping it rewrites the header in place at the same length.

``parse_header`` only parses: it never allocates the sizes the header claims and never reads past
the file; every defect raises CorruptFileError naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from . import dtypes as _dt
from .errors import CorruptFileError, ResourceLimitError

# ----------------------------------------------------------------------------- resource budget
# Every header is checked against these before anything it declares is allocated; a file over any
# of them raises ResourceLimitError (a CorruptFileError). Each is far above what a real file holds
# and far below what would cost a reader seconds or gigabytes. For scale: a 100 MB header (the
# format's own limit) can hold ~1.5M minimal tensor entries or ~7M one-character metadata keys,
# and json.loads needs ~25x the header's size in Python objects for such a file (2.5 GB).
MAX_HEADER = 100_000_000  # bytes of header JSON (the safetensors format's limit)
# Tensors in one file: the largest real checkpoints hold a few thousand per file (LLM shards) and
# ~100k across all shards of a model; 2**18 stays ~10x above any single file, and parses in ~1 s.
MAX_TENSORS = 1 << 18
# __metadata__ is a handful of str -> str entries in practice ("format": "pt", configs as JSON text).
MAX_METADATA_KEYS = 1 << 16
MAX_METADATA_BYTES = 16 << 20  # UTF-8 bytes of all metadata keys and values together
MAX_NAME_BYTES = 4096  # UTF-8 bytes of one tensor name or metadata key (real ones: < 200)
# A valid header nests 3 levels ({name: {"shape": [..]}}); deeper is corrupt. Checked by a byte
# scan before json.loads, so a deeply nested header never reaches Python's recursion limit.
MAX_JSON_DEPTH = 8
# Keys (':' outside strings) of a header within the budget above: 3 fields per tensor, its name,
# the metadata keys and "__metadata__"; checked by the same byte scan, before json.loads.
MAX_JSON_KEYS = 4 * MAX_TENSORS + MAX_METADATA_KEYS + 1
MAX_NDIM = 64  # numpy's limit on dimensions (numpy 2)
# numpy refuses an array whose nonzero dims times itemsize exceed its intp, even when a 0 dim
# makes it empty: shapes are checked with exact Python ints against this.
MAX_ARRAY_BYTES = np.iinfo(np.intp).max
ALIGN = 4096
META_KEY = "__metadata__"
COMPLETE_KEY = "daunce_fast.complete"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    begin: int  # byte offsets relative to the data start
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class Header:
    tensors: dict[str, TensorInfo]  # in offset order
    metadata: dict[str, str] | None  # raw __metadata__ (None when absent)
    header_len: int  # N
    file_size: int
    raw: bytes = field(repr=False, default=b"")

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def complete(self) -> bool:
        """False only when our own completion marker says "0"; files by other writers count as complete."""
        return (self.metadata or {}).get(COMPLETE_KEY, "1") != "0"

    def user_metadata(self) -> dict[str, str]:
        return {k: v for k, v in (self.metadata or {}).items() if k != COMPLETE_KEY}


# ----------------------------------------------------------------------------------------- writing


def plan_layout(tensors: dict) -> list[TensorInfo]:
    """Offsets for ``{name: (shape, dtype)}``: largest element size first (then by name), so every
    tensor starts at a multiple of its element size (the data start is page aligned)."""
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("tensors must be a non-empty dict name -> (shape, dtype)")
    items = []
    for name, spec in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == META_KEY:
            raise ValueError(f"{META_KEY!r} is reserved and cannot name a tensor")
        try:
            shape, dtype = spec
        except (TypeError, ValueError):
            raise TypeError(f"tensor {name!r}: expected (shape, dtype), got {spec!r}") from None
        shape = _check_shape(name, shape)
        code = _dt.to_code(dtype)
        _check_numpy_shape(shape, _dt.itemsize(code), f"tensor {name!r}")
        items.append((name, code, shape))
    items.sort(key=lambda t: (-_dt.itemsize(t[1]), t[0]))
    out, off = [], 0
    for name, code, shape in items:
        n = math.prod(shape) * _dt.itemsize(code)
        out.append(TensorInfo(name, code, shape, off, off + n))
        off += n
    return out


def _check_shape(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"tensor {name!r}: shape must be a tuple of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not hasattr(d, "__index__") or int(d) < 0:
            raise ValueError(f"tensor {name!r}: shape must hold non-negative ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def check_metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict str -> str, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str -> str (safetensors allows nothing else); bad entry {k!r}: {v!r}")
    if COMPLETE_KEY in metadata:
        raise ValueError(f"metadata key {COMPLETE_KEY!r} is reserved for the completion marker")
    return dict(metadata)


def encode_header(
    layout: list[TensorInfo], metadata: dict[str, str], complete: bool, header_len: int | None = None
) -> bytes:
    """8-byte length + JSON + space padding. ``header_len`` forces N (for in-place rewrites)."""
    meta = {k: metadata[k] for k in sorted(metadata)}  # canonical bytes: resume compares fingerprints
    meta[COMPLETE_KEY] = "1" if complete else "0"
    obj: dict[str, dict] = {META_KEY: meta}
    for t in layout:
        obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if header_len is None:
        header_len = len(body) + (-(8 + len(body)) % ALIGN)
    if len(body) > header_len:
        raise ValueError(f"header of {len(body)} bytes does not fit in the reserved {header_len}")
    if header_len > MAX_HEADER:
        raise ValueError(f"header of {header_len} bytes exceeds the safetensors limit of {MAX_HEADER}")
    return struct.pack("<Q", header_len) + body + b" " * (header_len - len(body))


# ----------------------------------------------------------------------------------------- parsing


def _no_constants(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_pairs(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _Dup(k)
        obj[k] = v
    return obj


class _Dup(Exception):
    pass


def read_header(fd: int, path: str) -> Header:
    """Parse and validate the header of the open file ``fd`` (its size taken from fstat)."""
    size = os.fstat(fd).st_size
    if size < 8:
        raise CorruptFileError(f"{path}: truncated file: {size} bytes, fewer than the 8-byte header length field")
    head = os.pread(fd, 16, 0)
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER:
        raise CorruptFileError(
            f"{path}: {_not_safetensors(head)}header length {n} exceeds the limit of {MAX_HEADER} bytes"
        )
    if n > size - 8:
        raise CorruptFileError(
            f"{path}: header length {n} runs past the end of the file ({size} bytes): truncated or corrupt"
        )
    raw = _pread_exact(fd, n, 8)
    if len(raw) != n:
        raise CorruptFileError(f"{path}: truncated file while reading the header")
    return parse_header_bytes(raw, size, path)


_MAGICS = (
    (b"\x93NUMPY", "a .npy array"),
    (b"\x89PNG", "a PNG image"),
    (b"PK\x03\x04", "a zip archive (.npz, torch.save?)"),
    (b"\x80\x02", "a pickle"),
    (b"\x80\x04", "a pickle"),
    (b"\x80\x05", "a pickle"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"{", "JSON text"),
    (b"\x1f\x8b", "gzip data"),
)


def _not_safetensors(head: bytes) -> str:
    """'not a safetensors file (it looks like a PNG image): ' when the first bytes say so, else ''.
    A safetensors file starts with a small little-endian length, then '{'."""
    kind = next((what for magic, what in _MAGICS if head.startswith(magic)), None)
    return f"not a safetensors file (it looks like {kind}): " if kind else "not a safetensors file? "


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.pread(fd, min(n - got, 1 << 24), off + got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


_SCAN_CHUNK = 1 << 22


def json_shape(raw: bytes) -> tuple[int, int]:
    """(deepest nesting, number of keys) of the JSON text ``raw``: brackets and ':' outside strings,
    counted with numpy in chunks (no Python recursion, ~0.1 s per 10 MB). Strings are tracked by
    their unescaped quotes (a quote after an odd run of backslashes is escaped). Meaningful for
    valid JSON; for invalid JSON it is only an estimate, and json.loads rejects it afterwards."""
    depth = max_depth = keys = 0
    in_str = False
    bs_carry = 0  # backslashes ending the previous chunk
    buf = np.frombuffer(raw, np.uint8)
    for c0 in range(0, len(buf), _SCAN_CHUNK):
        b = buf[c0 : c0 + _SCAN_CHUNK]
        idx = np.arange(len(b), dtype=np.int32)
        last_nb = np.maximum.accumulate(np.where(b != 92, idx, -1))  # last non-backslash at or before i
        q = np.flatnonzero(b == 34)
        prev = np.where(q > 0, last_nb[np.maximum(q - 1, 0)], -1)
        run = np.where(prev >= 0, q - 1 - prev, q + bs_carry)  # backslashes right before each quote
        real_q = q[run % 2 == 0]
        s = np.flatnonzero((b == 123) | (b == 125) | (b == 91) | (b == 93) | (b == 58))
        outside = (np.searchsorted(real_q, s) + in_str) % 2 == 0
        s = s[outside]
        sb = b[s]
        step = np.where((sb == 123) | (sb == 91), 1, np.where(sb == 58, 0, -1))
        level = depth + np.cumsum(step)
        if len(level):
            max_depth = max(max_depth, int(level.max()))
            depth = int(level[-1])
        keys += int(np.count_nonzero(sb == 58))
        in_str = (in_str + len(real_q)) % 2 == 1
        bs_carry = bs_carry + len(b) if last_nb[-1] < 0 else len(b) - 1 - int(last_nb[-1])
    return max_depth, keys


def _check_budget(raw: bytes, path: str) -> None:
    depth, keys = json_shape(raw)
    if depth > MAX_JSON_DEPTH:
        raise ResourceLimitError(
            f"{path}: header JSON is nested too deeply ({depth} levels; a safetensors header "
            f"has 3, the limit is {MAX_JSON_DEPTH})"
        )
    if keys > MAX_JSON_KEYS:
        raise ResourceLimitError(
            f"{path}: header declares {keys} JSON keys, more than the limit of {MAX_JSON_KEYS} "
            f"({MAX_TENSORS} tensors, {MAX_METADATA_KEYS} metadata keys): not a real file"
        )


def parse_header_bytes(raw: bytes, file_size: int, path: str = "<bytes>") -> Header:
    n = len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.lstrip(" \t\r\n").startswith("{"):
        raise CorruptFileError(f"{path}: header is not a JSON object (it must start with '{{')")
    _check_budget(raw, path)
    try:
        obj = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constants)
    except _Dup as exc:
        raise CorruptFileError(f"{path}: header JSON has the key {exc.args[0]!r} twice") from None
    except RecursionError:
        raise CorruptFileError(f"{path}: header JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, huge ints, constants
        raise CorruptFileError(f"{path}: header is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: header is not a JSON object")

    metadata = obj.pop(META_KEY, None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise CorruptFileError(f"{path}: __metadata__ must be an object str -> str, got {type(metadata).__name__}")
        if len(metadata) > MAX_METADATA_KEYS:
            raise ResourceLimitError(
                f"{path}: __metadata__ has {len(metadata)} keys, more than the limit of {MAX_METADATA_KEYS}"
            )
        total = 0
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise CorruptFileError(
                    f"{path}: __metadata__[{k[:80]!r}] is {type(v).__name__}, not a string "
                    f"(safetensors metadata maps str -> str)"
                )
            _check_name(k, "metadata key", path)
            total += len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        if total > MAX_METADATA_BYTES:
            raise ResourceLimitError(
                f"{path}: __metadata__ holds {total} bytes, more than the limit of {MAX_METADATA_BYTES}"
            )
    if len(obj) > MAX_TENSORS:
        raise ResourceLimitError(f"{path}: header declares {len(obj)} tensors, more than the limit of {MAX_TENSORS}")

    infos = []
    for name, e in obj.items():
        infos.append(_tensor_info(name, e, path, file_size - 8 - n))
    infos.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in infos:
        if t.begin != pos:
            what = "overlaps the previous tensor" if t.begin < pos else "leaves a gap after the previous tensor"
            if pos == 0 and t.begin > 0:
                what = "does not start at offset 0 (gap at the start of the data)"
            raise CorruptFileError(
                f"{path}: tensor {t.name!r} data_offsets [{t.begin}, {t.end}] {what} (expected begin {pos})"
            )
        pos = t.end
    total = pos
    if 8 + n + total != file_size:
        if 8 + n + total > file_size:
            raise CorruptFileError(
                f"{path}: tensor data runs past the end of the file: header says "
                f"{8 + n + total} bytes, file has {file_size} (truncated?)"
            )
        raise CorruptFileError(
            f"{path}: file size {file_size} != 8 + header {n} + data {total}: "
            f"{file_size - 8 - n - total} unexpected trailing bytes"
        )
    return Header({t.name: t for t in infos}, metadata, n, file_size, raw)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_name(name: str, what: str, path: str) -> None:
    nb = len(name.encode("utf-8", "surrogatepass"))
    if nb > MAX_NAME_BYTES:
        raise ResourceLimitError(
            f"{path}: a {what} of {nb} bytes ({name[:40]!r}...) exceeds the limit of {MAX_NAME_BYTES} bytes"
        )


def _tensor_info(name: str, e, path: str, data_size: int) -> TensorInfo:
    _check_name(name, "tensor name", path)
    where = f"{path}: tensor {name[:200]!r}"
    if not isinstance(e, dict):
        raise CorruptFileError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in e:
            raise CorruptFileError(f"{where}: missing {key!r}")
    code = e["dtype"]
    if not isinstance(code, str):
        raise CorruptFileError(f"{where}: dtype must be a string, got {code!r}")
    if code in _dt.SUBBYTE_CODES:
        raise CorruptFileError(f"{where}: sub-byte dtype {code!r} is not supported by daunce_fast.storage")
    if code not in _dt.CODES:
        raise CorruptFileError(f"{where}: unknown dtype {code[:40]!r}")
    shape = e["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CorruptFileError(f"{where}: shape must be a list of non-negative integers, got {str(shape)[:80]}")
    _check_numpy_shape(shape, _dt.itemsize(code), where)
    offs = e["data_offsets"]
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) and o >= 0 for o in offs)):
        raise CorruptFileError(
            f"{where}: data_offsets must be [begin, end] non-negative integers, got {str(offs)[:80]}"
        )
    begin, end = offs
    if end < begin:
        raise CorruptFileError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    if end > data_size:
        raise CorruptFileError(
            f"{where}: data_offsets [{begin}, {end}] run past the end of the file "
            f"({data_size} data bytes after the header)"
        )
    need = _nbytes(shape, _dt.itemsize(code), end - begin)
    if need != end - begin:
        need_s = str(need) if need <= end - begin else f"more than {end - begin}"
        raise CorruptFileError(
            f"{where}: shape {str(shape)[:80]} x {code} needs {need_s} bytes but data_offsets "
            f"[{begin}, {end}] hold {end - begin} (shape/size mismatch)"
        )
    return TensorInfo(name, code, tuple(shape), begin, end)


def _check_numpy_shape(shape, itemsize: int, where: str) -> None:
    """ResourceLimitError for a shape numpy cannot hold, even when empty: more than MAX_NDIM dims,
    or nonzero dims times itemsize above MAX_ARRAY_BYTES (exact Python ints, stopping early)."""
    if len(shape) > MAX_NDIM:
        raise ResourceLimitError(f"{where}: {len(shape)} dimensions, more than numpy's limit of {MAX_NDIM}")
    n = itemsize
    for d in shape:
        if d:
            n *= d
            if n > MAX_ARRAY_BYTES:
                raise ResourceLimitError(
                    f"{where}: shape {str(shape)[:80]} is too large for numpy (its nonzero "
                    f"dimensions hold more than {MAX_ARRAY_BYTES} bytes)"
                )


def _nbytes(shape: list, itemsize: int, limit: int) -> int:
    """Bytes of ``shape``; exact Python ints, stopping early (returning limit + 1) once above ``limit``
    so absurd headers cost nothing."""
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > limit:
            return limit + 1 if n > limit + 1 else n
    return n
