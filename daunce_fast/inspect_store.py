"""`daunce-fast inspect FILE`: what a store holds and whether it is complete, without loading it.

Works on finished files, on sharded indexes, and on the ``.partial`` file of an interrupted
writer (then it also lists the tiles its journal records as done).
"""
from __future__ import annotations

import json
import os


def _fmt_meta(meta: dict) -> list[str]:
    out = []
    for k, v in sorted(meta.items()):
        v = v if len(v) <= 160 else v[:157] + "..."
        out.append(f"  {k}: {v}")
    return out


def describe(path: str) -> str:
    from . import storage
    from .storage.format import read_header
    from .storage.journal import Journal
    from .storage.writer import JOURNAL_SUFFIX, PARTIAL_SUFFIX

    path = os.fspath(path)
    lines = []
    try:
        store = storage.open_any(path)
    except storage.IncompleteFileError as exc:
        partial = path if path.endswith(PARTIAL_SUFFIX) else path + PARTIAL_SUFFIX
        if not os.path.exists(partial):
            raise
        fd = os.open(partial, os.O_RDONLY)
        try:
            header = read_header(fd, partial)
        finally:
            os.close(fd)
        lines.append(f"{partial}: INCOMPLETE ({exc.__class__.__name__})")
        for name, info in header.tensors.items():
            lines.append(f"  tensor {name}: {info.dtype} {list(info.shape)}")
        if header.user_metadata():
            lines += ["metadata:", *_fmt_meta(header.user_metadata())]
        journal = partial[: -len(PARTIAL_SUFFIX)] + JOURNAL_SUFFIX
        keys = Journal.load(journal) if os.path.exists(journal) else None
        done = sorted(keys, key=lambda k: (isinstance(k, str), k)) if keys else []
        lines.append(f"done tiles ({len(done)}): {json.dumps(done[:50])}{' ...' if len(done) > 50 else ''}")
        return "\n".join(lines)
    with store:
        kind = "sharded store" if isinstance(store, storage.ShardedStore) else "safetensors file"
        lines.append(f"{path}: {kind}, complete")
        for name in store.names():
            lines.append(f"  tensor {name}: {store.dtype_code(name)} {list(store.shape(name))}")
        if store.metadata:
            lines += ["metadata:", *_fmt_meta(dict(store.metadata))]
    return "\n".join(lines)
