"""Helpers shared by the storage tests: hand-built safetensors bytes."""

from __future__ import annotations

import json
import struct

import numpy as np


def raw_file(header, data: bytes = b"", pad_to: int = 8, header_len: int | None = None) -> bytes:
    """8-byte length + header (a dict -> JSON, or raw bytes) + space padding + data."""
    body = header if isinstance(header, (bytes, bytearray)) else json.dumps(header).encode()
    body = bytes(body) + b" " * (-(8 + len(body)) % pad_to)
    n = len(body) if header_len is None else header_len
    return struct.pack("<Q", n) + body + data


def valid_header(tensors: dict[str, np.ndarray], metadata=None) -> tuple[dict, bytes]:
    """A (header dict, data bytes) pair for ``tensors`` packed in insertion order."""
    codes = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "uint8": "U8", "float64": "F64"}
    hdr, data, off = {}, b"", 0
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        hdr[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    return hdr, data


def write(path, blob: bytes) -> str:
    with open(path, "wb") as f:
        f.write(blob)
    return str(path)
