"""Round trips: every dtype, tiles in any order, metadata, official safetensors readers both ways."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import daunce_fast.storage as st
from daunce_fast.storage import dtypes

NUMPY_CODES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
RAW_CODES = ["BF16", "F8_E4M3", "F8_E5M2"]


def _random(rng, shape, code):
    dt = dtypes.numpy_dtype(code)
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("code", NUMPY_CODES + RAW_CODES)
def test_round_trip_every_dtype(tmp_path, rng, code):
    shape = (7, 13)
    want = _random(rng, shape, code)
    path = tmp_path / "t.safetensors"
    with st.create(path, {"t": (shape, code), "pad": ((3,), "int8")}) as w:
        assert w.dtype("t") == dtypes.numpy_dtype(code)
        w["t"][...] = want
        w["pad"][:] = [1, 2, 3]
    assert not os.path.exists(str(path) + ".partial") and not os.path.exists(str(path) + ".partial.journal")
    with st.open(path) as r:
        got = r["t"]
        assert isinstance(got, np.memmap) and not got.flags.writeable
        assert r.shape("t") == shape and r.dtype_code("t") == code
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(r["pad"], [1, 2, 3])
    if code in NUMPY_CODES:  # the official numpy readers (no bf16 / float8 in numpy)
        np.testing.assert_array_equal(load_file(str(path))["t"], want)
        with safe_open(str(path), "np") as f:
            np.testing.assert_array_equal(f.get_tensor("t"), want)
            np.testing.assert_array_equal(f.get_slice("t")[2:4], want[2:4])


@pytest.mark.parametrize("code", ["BF16", "F8_E4M3", "F8_E5M2", "F32"])
def test_torch_views_match_official_torch_reader(tmp_path, rng, code):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "t.safetensors")
    src = torch.from_numpy(rng.standard_normal((5, 6)).astype(np.float32)).to(dtypes.torch_dtype(code))
    with st.create(path, {"t": ((5, 6), code)}) as w:
        wt = w.torch("t")
        assert wt.dtype == src.dtype
        wt.copy_(src)  # writes through the writer's map: no copy
    with safe_open(path, "pt") as f:
        official = f.get_tensor("t")
    with st.open(path) as r:
        t = r.torch("t")
        assert t.dtype == src.dtype
        assert torch.equal(t.view(torch.uint8), official.view(torch.uint8))
        assert torch.equal(t.view(torch.uint8), src.view(torch.uint8))
        t.zero_()  # private copy-on-write: the file keeps its data
        assert torch.equal(r.torch("t").view(torch.uint8), src.view(torch.uint8))


def test_torch_from_numpy_shares_reader_memory(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "t.safetensors")
    with st.create(path, {"x": ((4, 4), "float32")}) as w:
        w["x"][...] = np.arange(16).reshape(4, 4)
    with st.open(path) as r:
        t = r.torch("x")
        assert torch.equal(t, torch.arange(16, dtype=torch.float32).reshape(4, 4))
        # zero copy: the tensor's memory lies inside a mapping of the file, not a fresh buffer
        with pytest.warns(UserWarning, match="not writable"):
            tv = torch.from_numpy(r["x"])
        assert tv.data_ptr() == r["x"].ctypes.data


def test_bf16_bits_helpers(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    bits = st.float32_to_bf16_bits(x)
    back = st.bf16_bits_to_float32(bits)
    np.testing.assert_allclose(back, x, rtol=2**-8)
    torch = pytest.importorskip("torch")
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, ref)  # same rounding as torch (nearest even)


def test_tiles_in_any_order_and_done_keys(tmp_path, rng):
    K, N, tile = 9, 101, 16
    want = rng.standard_normal((K, N)).astype(np.float32)
    path = tmp_path / "loss.safetensors"
    w = st.create(path, {"loss": ((K, N), "float32")})
    starts = list(range(0, N, tile))
    for t in rng.permutation(len(starts)):
        j0 = starts[t]
        w["loss"][:, j0 : j0 + tile] = want[:, j0 : j0 + tile]
        w.mark_done(int(t))
        assert w.is_done(int(t))
    assert w.done_keys() == set(range(len(starts)))
    assert not os.path.exists(path)  # nothing under the final name until close
    w.close()
    with st.open(path) as r:
        np.testing.assert_array_equal(r["loss"], want)
        # a column tile is a strided view of the map: no read until indexed
        np.testing.assert_array_equal(r["loss"][:, 40:57], want[:, 40:57])


def test_metadata_and_names(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = {"model": "llama", "K": "64", "unicodé": "✓"}
    with st.create(path, {"a": ((2,), "float32"), "b": ((3,), np.int64)}, metadata=meta) as w:
        assert sorted(w.names()) == ["a", "b"]
    with st.open(path) as r:
        assert r.metadata == meta
        assert r.raw_metadata["daunce_fast.complete"] == "1"
        assert sorted(r.names()) == ["a", "b"] and "a" in r and len(r) == 2
    with safe_open(str(path), "np") as f:
        md = f.metadata()
        assert {k: md[k] for k in meta} == meta
    with pytest.raises(TypeError, match="str -> str"):
        st.create(tmp_path / "bad.safetensors", {"a": ((1,), "float32")}, metadata={"K": 64})
    with pytest.raises(ValueError, match="reserved"):
        st.create(tmp_path / "bad.safetensors", {"a": ((1,), "float32")}, metadata={"daunce_fast.complete": "1"})


def test_data_is_page_aligned_and_tensors_aligned(tmp_path):
    path = str(tmp_path / "a.safetensors")
    tensors = {"i8": ((3,), "int8"), "f64": ((5,), "float64"), "f16": ((7,), "float16"), "f32": ((1,), "float32")}
    with st.create(path, tensors):
        pass
    with st.open(path) as r:
        assert r.header.data_start % 4096 == 0
        for name in r.names():
            assert r[name].ctypes.data % r[name].dtype.itemsize == 0, name


def test_dtype_spellings(tmp_path):
    torch = pytest.importorskip("torch")
    for spec, code in [
        ("float32", "F32"),
        ("F16", "F16"),
        (np.float64, "F64"),
        (np.dtype("int32"), "I32"),
        (torch.bfloat16, "BF16"),
        (torch.int64, "I64"),
        ("bfloat16", "BF16"),
        ("torch.float16", "F16"),
    ]:
        assert dtypes.to_code(spec) == code, spec
    for bad in ["float128", ">f4", object, "nonsense"]:
        with pytest.raises(TypeError):
            dtypes.to_code(bad)


def test_ours_reads_theirs(tmp_path, rng):
    tensors = {
        "w": rng.standard_normal((4, 5)).astype(np.float32),
        "idx": np.arange(6, dtype=np.int64),
        "h": rng.standard_normal(3).astype(np.float16),
        "empty": np.zeros((0, 3), np.float32),
        "flag": np.array([True, False]),
    }
    for meta in (None, {"source": "safetensors"}):
        path = str(tmp_path / "theirs.safetensors")
        save_file(tensors, path, metadata=meta)
        with st.open(path) as r:
            assert sorted(r.names()) == sorted(tensors)
            for k, v in tensors.items():
                assert r[k].dtype == v.dtype
                np.testing.assert_array_equal(r[k], v)
            assert r.metadata == (meta or {})


def test_empty_and_scalar_tensors(tmp_path):
    path = str(tmp_path / "e.safetensors")
    with st.create(path, {"empty": ((0, 4), "float32"), "scalar": ((), "float64"), "x": ((2,), "int32")}) as w:
        w.write("scalar", (), 1.0)
        w.write("empty", np.s_[:, 1:2], 1.0)
        assert w["scalar"][()] == 1.0
        w["scalar"][()] = 3.5
        w["x"][:] = [1, 2]
        assert w["empty"].shape == (0, 4)
    got = load_file(path)
    assert got["scalar"] == 3.5 and got["empty"].shape == (0, 4)
    with st.open(path) as r:
        assert r["scalar"][()] == 3.5 and r["empty"].shape == (0, 4)
        assert r.read("scalar") == 3.5 and r.read("empty", np.s_[:, :2]).shape == (0, 2)
        assert r.torch("scalar").item() == 3.5 and tuple(r.torch("empty").shape) == (0, 4)


def test_bad_layouts_rejected(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(ValueError):
        st.create(p, {})
    with pytest.raises(ValueError):
        st.create(p, {"a": ((-1, 2), "float32")})
    with pytest.raises(TypeError):
        st.create(p, {"a": (3, "float32", 1)})
    with pytest.raises(ValueError):
        st.create(p, {"__metadata__": ((1,), "float32")})


def test_closed_writer_and_reader_refuse(tmp_path):
    p = tmp_path / "x.safetensors"
    w = st.create(p, {"a": ((2,), "float32")})
    a = w["a"]
    w.close()
    with pytest.raises(st.StorageError):
        w["a"]
    r = st.open(p)
    arr = r["a"]
    r.close()
    assert arr.shape == (2,)  # arrays handed out stay usable after close
    np.testing.assert_array_equal(arr, [0, 0])
    with pytest.raises(st.StorageError):
        r["a"]
    del a


def test_import_does_not_pull_torch_or_triton(tmp_path):
    code = f"""
        import sys
        import daunce_fast.storage as st
        with st.create({str(tmp_path / "a.safetensors")!r}, {{"a": ((2, 3), "bfloat16")}}) as w:
            w["a"][:] = 1
        with st.open({str(tmp_path / "a.safetensors")!r}) as r:
            r["a"].sum()
        print(",".join(m for m in ("torch", "triton") if m in sys.modules) or "none")
    """
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
