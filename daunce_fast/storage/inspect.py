"""`daunce-fast inspect FILE`: what a store holds and whether it is complete, without loading it.

Works on finished files, on sharded indexes, and on the ``.partial`` file of an interrupted
writer (then it also lists the tiles its journal records as done).

The output stays small and safe for a terminal whatever the file holds: names, metadata and tile
keys are printed with control characters escaped (``escape``), each value cut to ``MAX_VALUE``
characters, at most ``MAX_TENSORS`` tensors and ``MAX_META`` metadata keys (the rest counted), and
a file that does not look like safetensors is refused (``check_safetensors``) from its first bytes,
before any header is read.
"""

from __future__ import annotations

import json
import os
import struct
import unicodedata

MAX_TENSORS = 50
MAX_META = 20
MAX_VALUE = 160
MAX_TILES = 50


def escape(text: str, limit: int = MAX_VALUE) -> str:
    """``text`` with every control, format or unassigned character (Unicode category C*: ESC, CR,
    bidi overrides, ...) written as ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN``, cut to ``limit``
    characters of the input with ``... (N more characters)`` appended. Costs O(limit), not O(len)."""
    text = str(text)
    head = text[:limit]
    out = []
    for c in head:
        if unicodedata.category(c)[0] == "C":
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(c)
    s = "".join(out)
    if len(text) > limit:
        s += f"... ({len(text) - limit} more characters)"
    return s


class NotSafetensorsError(ValueError):
    """The file is not a safetensors file (nor a sharded index); raised from its first bytes."""


def check_safetensors(path: str) -> None:
    """Raise NotSafetensorsError unless ``path`` starts like a safetensors file: an 8-byte
    little-endian header length n with 2 <= n <= size - 8, followed by a JSON object (``{`` after
    optional whitespace). Reads at most 72 bytes, opening non-blocking (a FIFO never hangs);
    IsADirectoryError / OSError for directories, FIFOs, devices and missing files.
    Sharded indexes (JSON files) are left to daunce_fast.storage.open_any."""
    from ._fs import open_input
    from .stores import is_index

    fd = open_input(path)  # non-blocking; NotARegularFileError / UnreadableFileError otherwise
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 72, 0)
    finally:
        os.close(fd)
    if head.lstrip()[:1] == b"{" and is_index(path):
        return
    ok = len(head) >= 10
    if ok:
        (n,) = struct.unpack("<Q", head[:8])
        ok = 2 <= n <= st.st_size - 8 and head[8:].lstrip(b" \t\r\n")[:1] == b"{"
    if not ok:
        raise NotSafetensorsError(
            f"{path} is not a safetensors file (nor a sharded index): its first bytes are not "
            f"a header length followed by a JSON header"
        )


def _fmt_meta(meta: dict) -> list[str]:
    keys = sorted(meta)
    out = [f"  {escape(k)}: {escape(meta[k])}" for k in keys[:MAX_META]]
    if len(keys) > MAX_META:
        out.append(f"  ... {len(keys) - MAX_META} more metadata keys not shown")
    return out


def _fmt_tensors(names: list, info) -> list[str]:
    """One line per tensor for the first MAX_TENSORS ``names``; ``info(name) -> (dtype code, shape)``."""
    out = []
    for name in names[:MAX_TENSORS]:
        dtype, shape = info(name)
        out.append(f"  tensor {escape(name)}: {escape(dtype)} {list(shape)}")
    if len(names) > MAX_TENSORS:
        out.append(f"  ... {len(names) - MAX_TENSORS} more tensors not shown")
    return out


def describe(path: str) -> str:
    """A few lines describing the store at ``path`` (a safetensors file, a sharded index, or an
    unfinished writer's ``.partial`` file, found from the final name too). Raises
    NotSafetensorsError (a ValueError) for other files, OSError for directories / missing files,
    daunce_fast.storage.StorageError for corrupt ones."""
    from ._fs import open_input
    from .errors import IncompleteFileError
    from .format import read_header
    from .journal import Journal
    from .sharded import ShardedStore
    from .stores import open_any
    from .writer import JOURNAL_SUFFIX, PARTIAL_SUFFIX

    path = os.fspath(path)
    if os.path.lexists(path):
        check_safetensors(path)
    lines = []
    try:
        store = open_any(path)
    except IncompleteFileError as exc:
        partial = path if path.endswith(PARTIAL_SUFFIX) else path + PARTIAL_SUFFIX
        if not os.path.exists(partial):
            raise
        check_safetensors(partial)
        fd = open_input(partial)
        try:
            header = read_header(fd, partial)
        finally:
            os.close(fd)
        lines.append(f"{escape(partial, 1000)}: INCOMPLETE ({exc.__class__.__name__})")
        t = header.tensors
        lines += _fmt_tensors(list(t), lambda name: (t[name].dtype, t[name].shape))
        if header.user_metadata():
            lines += ["metadata:", *_fmt_meta(header.user_metadata())]
        journal = partial[: -len(PARTIAL_SUFFIX)] + JOURNAL_SUFFIX
        keys = Journal.load(journal) if os.path.exists(journal) else None
        done = sorted(keys, key=lambda k: (isinstance(k, str), k)) if keys else []
        shown = escape(json.dumps(done[:MAX_TILES]), 4000)
        lines.append(f"done tiles ({len(done)}): {shown}{' ...' if len(done) > MAX_TILES else ''}")
        return "\n".join(lines)
    with store:
        kind = "sharded store" if isinstance(store, ShardedStore) else "safetensors file"
        lines.append(f"{escape(path, 1000)}: {kind}, complete")
        lines += _fmt_tensors(store.names(), lambda name: (store.dtype_code(name), store.shape(name)))
        if store.metadata:
            lines += ["metadata:", *_fmt_meta(dict(store.metadata))]
    return "\n".join(lines)
