"""Writer.write / Reader.read (pwrite / pread of contiguous runs) agree with numpy indexing."""

import numpy as np
import pytest

import daunce_fast.storage as st
from daunce_fast.storage import _io


def _random_key(rng, shape):
    key = []
    for d in shape:
        c = rng.integers(0, 5)
        if c == 0:
            key.append(int(rng.integers(-d, d)))
        elif c == 1:
            key.append(slice(None))
        elif c == 2:
            a, b = sorted(rng.integers(0, d + 1, size=2))
            key.append(slice(int(a), int(b)))
        elif c == 3:
            a = int(rng.integers(-d, d))
            key.append(slice(a, None, int(rng.choice([1, 2, -1, 3]))))
        else:
            key.append(slice(int(rng.integers(0, d)), int(rng.integers(0, d)) + 1))
    if rng.random() < 0.3:
        key = key[: rng.integers(0, len(key) + 1)] + [Ellipsis]
    return tuple(key)


@pytest.mark.parametrize("via", ["write", "setitem"])
@pytest.mark.parametrize("min_run", [0, 2048, 1 << 40])  # always pread/pwrite, the default, always the map
def test_write_and_read_boxes_match_numpy(tmp_path, rng, monkeypatch, min_run, via):
    monkeypatch.setattr(_io, "MIN_RUN", min_run)
    shape = (5, 7, 130)
    ref = np.zeros(shape, np.float32)
    path = tmp_path / "b.safetensors"
    with st.create(path, {"x": (shape, "float32"), "pad": ((3,), "int8")}) as w:
        for _ in range(150):
            key = _random_key(rng, shape)
            val = rng.standard_normal(ref[key].shape).astype(np.float32)
            if rng.random() < 0.2:
                val = np.float64(rng.standard_normal())  # broadcast scalar, cast
            if via == "write":
                w.write("x", key, val)
            else:
                w["x"][key] = val
            ref[key] = val
        np.testing.assert_array_equal(w["x"], ref)  # pwrite and the map see the same page cache
    with st.open(path) as r:
        np.testing.assert_array_equal(r["x"], ref)
        for _ in range(150):
            key = _random_key(rng, shape)
            got = r.read("x", key)
            assert type(got) is np.ndarray and got.flags.writeable
            np.testing.assert_array_equal(got, ref[key], err_msg=str(key))


def test_write_bf16_from_floats_and_column_tiles(tmp_path, rng):
    K, N = 4, 3000
    x = rng.standard_normal((K, N)).astype(np.float32)
    path = tmp_path / "b.safetensors"
    with st.create(path, {"b": ((K, N), "bfloat16"), "f": ((K, N), "float32")}) as w:
        for j0 in range(0, N, 700):
            w.write("b", (slice(None), slice(j0, j0 + 700)), x[:, j0 : j0 + 700])
            w.write("f", np.s_[:, j0 : j0 + 700], x[:, j0 : j0 + 700])
        with pytest.raises(TypeError, match="raw bits"):
            st.create(tmp_path / "c.safetensors", {"q": ((2,), "F8_E4M3")}).write("q", 0, np.float32(1))
    with st.open(path) as r:
        np.testing.assert_array_equal(r["b"], st.float32_to_bf16_bits(x))
        np.testing.assert_array_equal(r.read("f", np.s_[:, 1000:2100]), x[:, 1000:2100])


def test_read_unknown_or_bad_key(tmp_path):
    with st.create(tmp_path / "a.safetensors", {"x": ((3, 4), "float32")}):
        pass
    with st.open(tmp_path / "a.safetensors") as r:
        with pytest.raises(KeyError, match="no tensor 'y'"):
            r.read("y")
        with pytest.raises(IndexError):
            r.read("x", (0, 0, 0))
        with pytest.raises(IndexError):
            r.read("x", np.s_[5])


def test_setitem_fast_path_is_used_and_falls_back(tmp_path, monkeypatch):
    calls = []
    real = _io.pwrite_box

    def spy(*a, **k):
        ok = real(*a, **k)
        calls.append(ok)
        return ok

    import daunce_fast.storage._views as views

    monkeypatch.setattr(views, "pwrite_box", spy)
    with st.create(tmp_path / "a.safetensors", {"x": ((4, 1024), "float32")}) as w:
        x = w["x"]
        x[:, 0:512] = 1.0
        assert calls == [True]  # a column tile of the top-level view: pwrite
        x[1:3] = x[0:2]  # overlapping source in the same map: numpy, not pwrite
        x[::2, 600] = 5  # a strided box: planned, refused, the map does it
        row = x[3]
        row[700:710] = 7  # a slice of the view: the map
        assert calls == [True, False]
        with pytest.raises(ValueError):
            x[:, 0:4] = np.ones(5)  # numpy's own broadcast error
    with st.open(tmp_path / "a.safetensors") as r:
        a = r["x"]
        assert (a[:, :512] == 1).all() and a[0, 600] == 5 and a[2, 600] == 5 and a[1, 600] == 0
        assert (a[3, 700:710] == 7).all()
    x[0, 0] = 3  # after close the map still works (the file is complete; no crash)


def test_open_with_advice(tmp_path):
    with st.create(tmp_path / "a.safetensors", {"x": ((3, 4), "float32")}) as w:
        w["x"][...] = 2
    for advice in ("random", "sequential", "normal", "willneed"):
        with st.open(tmp_path / "a.safetensors", advice=advice) as r:
            assert (r["x"] == 2).all()
    with pytest.raises(ValueError, match="advice"):
        st.open(tmp_path / "a.safetensors", advice="fast")
