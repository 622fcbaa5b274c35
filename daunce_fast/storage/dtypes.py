"""Mapping between safetensors dtype codes, numpy dtypes and torch dtypes (torch imported lazily).

numpy has no bfloat16 / float8 types, so those tensors are exposed as their raw bits:
BF16 -> uint16, F8_E4M3 / F8_E5M2 / F8_E8M0 -> uint8. ``torch_dtype(code)`` gives the real torch
dtype for a zero-copy ``tensor.view(dtype)``.

``decode_float32(bits_or_values, code)`` is the one decoding of stored data to float32 that every
entry point uses (Reader.float32, ShardedArray.float32, correlation.source.Source, CLI):
exact for every float code (BF16, F16, F8_E4M3, F8_E5M2, F8_E8M0, F32), rounding for F64 and
wide integers, a TypeError for BOOL, complex and sub-byte codes.
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
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "float": "F32",
    "complex64": "C64",
    "float64": "F64",
    "double": "F64",
    "int64": "I64",
    "long": "I64",
    "uint64": "U64",
    "int": "I32",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
}
_NUMPY_KINDS = {  # numpy dtype (native little-endian) -> code
    np.dtype(v[0]).newbyteorder("<") if v[0][0] != "|" else np.dtype(v[0]): k
    for k, v in _CODES.items()
    if k not in ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")
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
        raise TypeError(
            f"unknown dtype name {dtype!r}; use e.g. 'float32', 'float16', 'bfloat16', 'int64' or a "
            f"safetensors code ({', '.join(sorted(_CODES))})"
        )
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
    """Decode bfloat16 raw bits (uint16) to float32, exactly (bf16 is the top half of a float32).
    Same as ``decode_float32(bits, "BF16")``, kept for existing callers."""
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


# ------------------------------------------------------------------------------ float32 decoding


def _f8_table(exp_bits: int, man_bits: int, bias: int, kind: str) -> np.ndarray:
    """float32 value of each of the 256 codes of a float8 format, from its definition.

    kind "fn" (E4M3FN): sign bit, no infinities, only exponent and mantissa all ones is NaN;
    "ieee" (E5M2): sign bit, exponent all ones is inf (mantissa 0) or NaN, like IEEE 754;
    "e8m0" (E8M0FNU): no sign, no mantissa, value 2**(e - bias), 0xFF is NaN (no zero).
    Exponent 0 is subnormal (mantissa / 2**man_bits * 2**(1 - bias)) for the signed formats.
    Every value is exactly representable in float32 (float64 arithmetic here is exact too)."""
    code = np.arange(256, dtype=np.int64)
    if kind == "e8m0":
        vals = np.ldexp(1.0, code - bias)
        vals[255] = np.nan
        return vals.astype(np.float32)
    sign = np.where(code >> 7, -1.0, 1.0)
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    frac = m / float(1 << man_bits)
    vals = sign * np.where(e == 0, np.ldexp(frac, 1 - bias), np.ldexp(1.0 + frac, e - bias))
    top = e == (1 << exp_bits) - 1
    if kind == "fn":
        vals[top & (m == (1 << man_bits) - 1)] = np.nan
    else:
        vals[top & (m == 0)] = sign[top & (m == 0)] * np.inf
        vals[top & (m != 0)] = np.nan
    return vals.astype(np.float32)


_F8_TABLES = {
    "F8_E4M3": _f8_table(4, 3, 7, "fn"),  # torch.float8_e4m3fn: max 448, 0x7F / 0xFF NaN
    "F8_E5M2": _f8_table(5, 2, 15, "ieee"),  # torch.float8_e5m2: max 57344, +-inf, NaN
    "F8_E8M0": _f8_table(8, 0, 127, "e8m0"),  # torch.float8_e8m0fnu: 2**-127 .. 2**127, 0xFF NaN
}
for _t in _F8_TABLES.values():
    _t.flags.writeable = False

# Codes with no float32 meaning: decode_float32 refuses them.
NOT_DECODABLE = frozenset({"BOOL", "C64"}) | SUBBYTE_CODES


def decode_float32(bits_or_values: np.ndarray, code: str) -> np.ndarray:
    """Stored data of safetensors dtype ``code`` -> float32 array of the same shape.

    ``bits_or_values`` is what storage hands out for that code: raw bits for BF16 (uint16; int16
    accepted) and the float8 codes (uint8; int8 accepted), the numpy dtype of the code otherwise
    (``numpy_dtype(code)``, any byte order). Anything else raises TypeError (a float array passed
    with code "BF16" would otherwise be decoded as garbage).

    Exact: BF16 (the top half of a float32), F16, F8_E4M3 (FN variant: no inf, 0x7F/0xFF NaN),
    F8_E5M2 (IEEE-like, with inf), F8_E8M0 (unsigned powers of two, 0xFF NaN), F32, and the
    integer codes whose values have at most 24 significant bits (all of U8, I8, U16, I16).
    Rounded to nearest float32: F64 (beyond float32's range -> +-inf, below -> subnormal / 0),
    and I32/U32/I64/U64 values of more than 24 significant bits.
    TypeError: BOOL, C64 and the sub-byte codes (F4, F6_E2M3, F6_E3M2), and unknown codes.

    Returns a new writable array, except for F32 input already float32 (native order), which is
    returned as given (``np.asarray``): copy it before writing into it.
    """
    if code in NOT_DECODABLE:
        raise TypeError(
            f"safetensors dtype {code} has no float32 decoding (bool, complex and sub-byte types are "
            f"not numeric scores): convert the tensor yourself"
        )
    if code not in _CODES:
        raise TypeError(f"unknown safetensors dtype code {code!r}; known: {', '.join(sorted(_CODES))}")
    a = np.asarray(bits_or_values)
    want = numpy_dtype(code)
    if is_raw_bits(code):
        if a.dtype.kind not in "ui" or a.dtype.itemsize != want.itemsize:
            raise TypeError(
                f"decode_float32: {code} data must be its raw bits ({want}), got a {a.dtype} array; "
                f"read it with reader[name] / reader.read(name, index)"
            )
        if a.dtype.kind == "i":
            a = a.view(want)
        if code == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return _F8_TABLES[code][a]
    if a.dtype.kind != want.kind or a.dtype.itemsize != want.itemsize:
        raise TypeError(f"decode_float32: {code} data must be {want}, got a {a.dtype} array")
    if code == "F32":
        return a.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):  # F64 beyond float32's range -> +-inf, as documented
        return a.astype(np.float32)
