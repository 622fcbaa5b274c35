"""decode_float32: one exact decoding of every safetensors dtype, checked against torch, and the
entry points that use it (Reader.float32, ShardedArray.float32; correlation.source.Source in
tests/correlation/test_source.py)."""

import numpy as np
import pytest
import torch

import daunce_fast.storage as st
from daunce_fast.storage import dtypes as dt

F8 = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu}


def _same(a, b):
    """Equal values, NaN where NaN, and the same bits (so -0.0 != 0.0) where not NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("code", list(F8))
def test_float8_all_256_codes_match_torch(code):
    bits = np.arange(256, dtype=np.uint8)
    want = torch.tensor(bits, dtype=torch.uint8).view(F8[code]).float().numpy()
    _same(dt.decode_float32(bits, code), want)
    _same(dt.decode_float32(bits.view(np.int8), code), want)  # signed bytes accepted as bits


def test_float8_format_landmarks():
    e4 = dt.decode_float32(np.array([0x7E, 0x7F, 0xFF, 0x01, 0x80], np.uint8), "F8_E4M3")
    assert e4[0] == 448 and np.isnan(e4[1]) and np.isnan(e4[2]) and e4[3] == 2.0**-9
    assert e4[4] == 0 and np.signbit(e4[4])
    e5 = dt.decode_float32(np.array([0x7B, 0x7C, 0xFC, 0x7D], np.uint8), "F8_E5M2")
    assert e5[0] == 57344 and e5[1] == np.inf and e5[2] == -np.inf and np.isnan(e5[3])
    e8 = dt.decode_float32(np.array([0, 127, 254, 255], np.uint8), "F8_E8M0")
    assert e8[0] == 2.0**-127 and e8[1] == 1 and e8[2] == 2.0**127 and np.isnan(e8[3])


@pytest.mark.parametrize("code,tdtype", [("BF16", torch.bfloat16), ("F16", torch.float16)])
def test_16_bit_floats_all_codes_match_torch(code, tdtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = torch.from_numpy(bits.view(np.int16)).view(tdtype).float().numpy()
    stored = bits if code == "BF16" else bits.view(np.float16)
    _same(dt.decode_float32(stored, code), want)


ALL = sorted(dt.CODES)


@pytest.mark.parametrize("code", ALL)
def test_every_code_round_trips_and_decodes(tmp_path, code):
    """Write each dtype code, read it back bit-exact, decode it like torch's .float() (or refuse)."""
    rng = np.random.default_rng(0)
    nd = dt.numpy_dtype(code)
    raw = rng.integers(0, 256, size=(5, 7) + (nd.itemsize,), dtype=np.uint8)
    if code == "BOOL":
        raw = raw % 2
    data = np.ascontiguousarray(raw).view(nd).reshape(5, 7)
    path = tmp_path / "x.safetensors"
    with st.create(path, {"x": ((5, 7), code)}) as w:
        w["x"][...] = data
    with st.open(path) as r:
        assert r.dtype_code("x") == code
        np.testing.assert_array_equal(r["x"].view(np.uint8), data.view(np.uint8))
        if code in dt.NOT_DECODABLE:
            with pytest.raises(TypeError, match=code):
                dt.decode_float32(r["x"], code)
            with pytest.raises(TypeError, match=code):
                r.float32("x")
            return
        t = r.torch("x")
        if code in ("U16", "U32", "U64"):  # torch's uint16..64 lack some casts: go through float64
            want = r["x"].astype(np.float64).astype(np.float32)
        else:
            want = t.float().numpy()
        _same(dt.decode_float32(r["x"], code), want)
        _same(r.float32("x"), want)
        _same(r.float32("x", (slice(None), slice(2, 5))), want[:, 2:5])
        _same(r.float32("x", (1, slice(None, None, 2))), want[1, ::2])
        assert r.float32("x").flags.writeable


def test_subbyte_and_unknown_codes_refused():
    for code in ("F4", "F6_E2M3", "F6_E3M2", "BOOL", "C64", "F33"):
        with pytest.raises(TypeError):
            dt.decode_float32(np.zeros(3, np.uint8), code)


def test_wrong_array_dtype_for_code_is_a_type_error():
    with pytest.raises(TypeError, match="raw bits"):
        dt.decode_float32(np.zeros(3, np.float32), "BF16")  # already values: decoding would be garbage
    with pytest.raises(TypeError, match="raw bits"):
        dt.decode_float32(np.zeros(3, np.uint16), "F8_E4M3")
    with pytest.raises(TypeError, match="float16"):
        dt.decode_float32(np.zeros(3, np.float32), "F16")


def test_f64_and_wide_ints_round_to_nearest_float32():
    x = np.array([1e308, -1e308, 1e-50, 1 / 3], np.float64)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(dt.decode_float32(x, "F64"), x.astype(np.float32))
    big = np.array([2**24 + 1, 2**53], np.int64)
    np.testing.assert_array_equal(dt.decode_float32(big, "I64"), np.array([2**24, 2**53], np.float32))
    small = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(dt.decode_float32(small, "I8"), small.astype(np.float32))


def test_bf16_through_reader_getitem_equals_torch(tmp_path):
    """The issue's bug: reader[name] of a BF16 store is raw uint16 bits; decode_float32 gives the values."""
    vals = torch.randn(64, 33).to(torch.bfloat16)
    path = tmp_path / "b.safetensors"
    with st.create(path, {"s": ((64, 33), "bfloat16")}) as w:
        w.torch("s").copy_(vals)
    with st.open(path) as r:
        assert r["s"].dtype == np.uint16
        got = st.decode_float32(r["s"], r.dtype_code("s"))
        np.testing.assert_array_equal(got, vals.float().numpy())
        np.testing.assert_array_equal(r.float32("s", (slice(None), slice(3, 9))), vals.float().numpy()[:, 3:9])


@pytest.mark.parametrize("code", ["F8_E4M3", "F8_E5M2", "BF16"])
def test_sharded_decode(tmp_path, code):
    nd = dt.numpy_dtype(code)
    bits = np.random.default_rng(1).integers(0, 1 << (8 * nd.itemsize), size=(6, 10)).astype(nd)
    want = dt.decode_float32(bits, code)
    sw = st.create_sharded(tmp_path / "s.index.json", "x", (6, 10), code, num_shards=2)
    for i in range(2):
        with sw.create_shard(i) as w:
            a, b = sw.shard_range(i)
            w["x"][...] = bits[a:b]
    with st.open_sharded(tmp_path / "s.index.json") as sa:
        _same(sa.float32(), want)
        _same(sa.float32((slice(None), slice(2, 7))), want[:, 2:7])
