"""What a resumable score file is valid for, and the error when a resume does not match.

``correlate(..., out=PATH)`` (and the distributed one) store in the file's metadata a content
fingerprint of everything that determines the scores: both input matrices in full (streamed, see
Source.fingerprint), the method, the output dtype, the backend and product precision (they change
the values' rounding) and this format's version. ``resume=True`` continues a partial file only
when all of them match; otherwise ResumeMismatchError names what differs.
"""

from __future__ import annotations

import json
import os

from ..storage.errors import LayoutMismatchError

FORMAT = "daunce_fast.scores/2"  # bump when the values written for the same inputs change

# metadata key -> what the error calls it
_WHAT = {
    "format": "the file format version",
    "train_fingerprint": "the train matrix",
    "test_fingerprint": "the test matrix",
    "method": "the method",
    "out_dtype": "the output dtype",
    "values": "the backend / precision",
    "K": "the number of models K",
    "N": "the number of train examples N",
    "M": "the number of test examples M",
}


class ResumeMismatchError(LayoutMismatchError):
    """A partial score file was computed from other inputs or options than the ones given; the
    message names what differs. Delete the partial file or pass ``resume=False`` to start afresh."""


def resume_metadata(tr, te, *, method: str, out_dtype: str, backend: str, precision: str) -> dict[str, str]:
    """The metadata of a score file: its identity (inputs in full, options, format)."""
    return {
        "daunce_fast.op": "correlate",
        "format": FORMAT,
        "layout": "train x test",
        "method": method,
        "out_dtype": out_dtype,
        "values": f"{backend}/{precision}",
        "K": str(tr.K),
        "N": str(tr.n),
        "M": str(te.n),
        "train_fingerprint": tr.fingerprint(),
        "test_fingerprint": te.fingerprint(),
    }


def effective_precision(backend: str, precision: str | None, device_type: str, out_dtype: str) -> str:
    """The product precision a backend actually uses (what changes the values' rounding)."""
    if backend == "torch":
        return "fp64"
    if backend == "cpu":
        return "fp64" if out_dtype == "float64" else "fp32"
    if precision is not None:
        return precision
    return "tf32" if device_type == "cuda" else "fp32"


def _partial_metadata(partial: str) -> dict | None:
    from ..storage.format import read_header

    try:
        fd = os.open(partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return read_header(fd, partial).user_metadata()
    except (OSError, ValueError):  # unreadable header (CorruptFileError is a ValueError): the storage error stands
        return None
    finally:
        os.close(fd)


def _index_metadata(index_path: str) -> dict | None:
    try:
        with open(index_path, encoding="utf-8") as f:
            meta = json.load(f).get("metadata")
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def mismatch_error(exc: LayoutMismatchError, path: str, want: dict, *, sharded: bool = False) -> LayoutMismatchError:
    """Turn the storage layer's LayoutMismatchError for ``path`` (a score file, or a sharded
    index) into a ResumeMismatchError naming what differs; ``exc`` itself when nothing is known."""
    path = os.fspath(path)
    have = _index_metadata(path) if sharded else _partial_metadata(path + ".partial")
    if have is None:
        return exc
    if have.get("format") != FORMAT:
        diffs = [f"{_WHAT['format']} ({have.get('format', 'an earlier daunce_fast')} vs {FORMAT})"]
    else:
        diffs = []
        for key, what in _WHAT.items():
            if key != "format" and have.get(key) != want.get(key):
                fine = key not in ("train_fingerprint", "test_fingerprint")
                diffs.append(f"{what} ({have.get(key)!r} vs {want.get(key)!r})" if fine else what)
    if not diffs:
        return exc
    where = path if sharded else path + ".partial"
    remove = f"delete {where} and its shards" if sharded else f"delete {where}"
    return ResumeMismatchError(
        f"cannot resume {where}: {', '.join(diffs)} differ{'s' if len(diffs) == 1 else ''} from what the partial file "
        f"was computed from; {remove}, or pass resume=False to start afresh"
    )
