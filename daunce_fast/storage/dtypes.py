"""Mapping between safetensors dtype codes, numpy dtypes and torch dtypes (torch imported lazily).

numpy has no bfloat16 / float8 types, so those tensors are exposed as their raw bits:
BF16 -> uint16, F8_E4M3 / F8_E5M2 / F8_E8M0 -> uint8. ``torch_dtype(code)`` gives the real torch
dtype for a zero-copy ``tensor.view(dtype)``; ``bf16_bits_to_float32`` decodes BF16 bits in numpy.
"""
from __future__ import annotations

import numpy as np

# code -> (numpy dtype of the stored bits, itemsize, torch dtype name)
_CODES: dict[str, tuple[str, int, str]] = {
    "BOOL": ("|b1", 1, "bool"),
    "U8": ("|u1", 1, "uint8"),
    "I8": ("|i1", 1, "int8"),
    "F8_E4M3": ("|u1", 1, "float8_e4m3fn"),
    "F8_E5M2": ("|u1", 1, "float8_e5m2"),
    "F8_E8M0": ("|u1", 1, "float8_e8m0fnu"),
    "I16": ("<i2", 2, "int16"),
    "U16": ("<u2", 2, "uint16"),
    "F16": ("<f2", 2, "float16"),
    "BF16": ("<u2", 2, "bfloat16"),
    "I32": ("<i4", 4, "int32"),
    "U32": ("<u4", 4, "uint32"),
    "F32": ("<f4", 4, "float32"),
    "C64": ("<c8", 8, "complex64"),
    "F64": ("<f8", 8, "float64"),
    "I64": ("<i8", 8, "int64"),
    "U64": ("<u8", 8, "uint64"),
}
CODES = frozenset(_CODES)
# Codes the safetensors format knows but daunce_fast.storage cannot map (sub-byte element types).
SUBBYTE_CODES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})

# Names accepted by create(): numpy / torch style names and the safetensors codes themselves.
_NAMES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
    "half": "F16", "bfloat16": "BF16", "bf16": "BF16", "int32": "I32", "uint32": "U32",
    "float32": "F32", "float": "F32", "complex64": "C64", "float64": "F64", "double": "F64",
    "int64": "I64", "long": "I64", "uint64": "U64", "int": "I32",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
}
_NUMPY_KINDS = {  # numpy dtype (native little-endian) -> code
    np.dtype(v[0]).newbyteorder("<") if v[0][0] != "|" else np.dtype(v[0]): k
    for k, v in _CODES.items() if k not in ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")
}


def to_code(dtype) -> str:
    """safetensors code ("F32", "BF16", ...) for a str name, numpy dtype/type or torch dtype."""
    if isinstance(dtype, str):
        s = dtype.strip()
        if s in _CODES:
            return s
        s = s.lower().replace("torch.", "").replace("numpy.", "")
        if s in _NAMES:
            return _NAMES[s]
        try:
            return _numpy_code(np.dtype(s))
        except TypeError:
            pass
        raise TypeError(f"unknown dtype name {dtype!r}; use e.g. 'float32', 'float16', 'bfloat16', 'int64' or a "
                        f"safetensors code ({', '.join(sorted(_CODES))})")
    if type(dtype).__module__.startswith("torch"):  # torch.dtype, without importing torch
        name = str(dtype).replace("torch.", "")
        if name in _NAMES:
            return _NAMES[name]
        raise TypeError(f"torch dtype {dtype} has no safetensors equivalent supported here")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"cannot interpret {dtype!r} as a dtype") from exc
    return _numpy_code(dt)


def _numpy_code(dt: np.dtype) -> str:
    if dt.byteorder == ">" and dt.itemsize > 1:
        raise TypeError(f"big-endian dtype {dt} is not allowed: safetensors stores little-endian data")
    key = dt.newbyteorder("<") if dt.itemsize > 1 else dt
    if key in _NUMPY_KINDS:
        return _NUMPY_KINDS[key]
    raise TypeError(f"numpy dtype {dt} has no safetensors equivalent")


def numpy_dtype(code: str) -> np.dtype:
    """numpy dtype of the stored bits (uint16 for BF16, uint8 for the float8 codes)."""
    return np.dtype(_CODES[code][0])


def itemsize(code: str) -> int:
    return _CODES[code][1]


def torch_dtype(code: str):
    """The torch dtype of ``code`` (imports torch)."""
    import torch

    name = _CODES[code][2]
    dt = getattr(torch, name, None)
    if dt is None:
        raise TypeError(f"this torch ({torch.__version__}) has no dtype {name} for safetensors {code}")
    return dt


def is_raw_bits(code: str) -> bool:
    """True when numpy sees only the raw bits of the type (BF16, float8)."""
    return code in ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 raw bits (uint16) to float32, exactly (bf16 is the top half of a float32)."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError(f"expected uint16 bfloat16 bits, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even, NaN kept NaN) and return the raw uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    if nan.any():
        rounded = np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)
    return rounded
