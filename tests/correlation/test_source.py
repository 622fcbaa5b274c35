"""Source, the one reader of [K, n] loss matrices: column tiles of files, sharded indexes, readers,
arrays and tensors, stored reduced floats decoded exactly, a store's tensor picked by name.
(These were the tests of storage.iter_column_tiles, which Source replaced.)"""

import numpy as np
import pytest
import torch

import daunce_fast.storage as st
from daunce_fast.correlation.source import Source
from daunce_fast.storage import dtypes as dt


def _tiles(src: Source, width: int) -> list[tuple[int, int, np.ndarray]]:
    return [(j0, min(src.n, j0 + width), src.numpy_tile(j0, min(src.n, j0 + width))) for j0 in range(0, src.n, width)]


def _same(a, b):
    """Equal values, NaN where NaN, and the same bits (so -0.0 != 0.0) where not NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


def test_files_indexes_readers_and_arrays_read_by_column_tiles(tmp_path, rng):
    K, N = 5, 23
    want = rng.standard_normal((K, N)).astype(np.float32)
    single = tmp_path / "loss.safetensors"
    with st.create(single, {"loss": ((K, N), "float32")}) as w:
        w["loss"][...] = want
    sw = st.create_sharded(tmp_path / "loss.index.json", "loss", (K, N), "float32", shard_sizes=[2, 3])
    for i in range(2):
        lo, hi = sw.shard_range(i)
        with sw.create_shard(i) as w:
            w["loss"][...] = want[lo:hi]
    for path in (single, str(tmp_path / "loss.index.json")):
        src = Source(path, "x")
        try:
            tiles = _tiles(src, 7)
            assert [(j0, j1) for j0, j1, _ in tiles] == [(0, 7), (7, 14), (14, 21), (21, 23)]
            for j0, j1, block in tiles:
                assert block.shape == (K, j1 - j0)
                np.testing.assert_array_equal(block, want[:, j0:j1])
        finally:
            src.close()
    for x in (want, st.open(single), st.open_sharded(tmp_path / "loss.index.json")):
        got = np.concatenate([b for _, _, b in _tiles(Source(x, "x"), 10)], axis=1)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="2-D"):
        Source(np.zeros(3), "x")


def test_bf16_is_decoded_and_a_store_tensor_is_picked_by_name(tmp_path, rng):
    x = rng.standard_normal((3, 9)).astype(np.float32)
    path = tmp_path / "b.safetensors"
    with st.create(path, {"b": ((3, 9), "bfloat16"), "other": ((1,), "int8")}) as w:
        w["b"][...] = st.float32_to_bf16_bits(x)
    with pytest.raises(ValueError, match="2 tensors"):
        Source(path, "x")
    with pytest.raises(KeyError, match="'nope'"):
        Source(path, "x", tensor="nope")
    src = Source(path, "x", tensor="b")
    got = np.concatenate([b for _, _, b in _tiles(src, 4)], axis=1)
    src.close()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, rtol=2**-8)


def test_torch_tensor_input(rng):
    x = torch.from_numpy(rng.standard_normal((4, 10)).astype(np.float32))
    for j0, j1, block in _tiles(Source(x, "x"), 3):
        np.testing.assert_array_equal(block, x[:, j0:j1].numpy())


def test_npy_paths_are_memory_mapped(tmp_path, rng):
    x = rng.standard_normal((4, 10))
    np.save(tmp_path / "x.npy", x)
    src = Source(str(tmp_path / "x.npy"), "x")
    assert src.kind == "numpy" and isinstance(src.data.base, np.memmap) and not src.data.flags.writeable
    np.testing.assert_array_equal(src.numpy_tile(2, 7), x[:, 2:7])


def test_a_source_given_as_input_is_read_as_it_is_and_stays_open(tmp_path, rng):
    x = rng.standard_normal((3, 6)).astype(np.float32)
    with st.create(tmp_path / "x.safetensors", {"t": ((3, 6), "float32")}) as w:
        w["t"][...] = x
    outer = Source(tmp_path / "x.safetensors", "x.safetensors")
    inner = Source(outer, "train")
    assert inner.name == "train" and (inner.K, inner.n, inner.code) == (3, 6, "F32")
    inner.close()
    np.testing.assert_array_equal(outer.numpy_tile(0, 6), x)  # still open
    outer.close()


@pytest.mark.parametrize("code", ["F8_E4M3", "F8_E5M2", "BF16"])
def test_reduced_floats_of_files_and_sharded_stores_decode_exactly(tmp_path, code):
    nd = dt.numpy_dtype(code)
    bits = np.random.default_rng(1).integers(0, 1 << (8 * nd.itemsize), size=(6, 10)).astype(nd)
    want = dt.decode_float32(bits, code)
    path = tmp_path / "f.safetensors"
    with st.create(path, {"x": ((6, 10), code)}) as w:
        w["x"][...] = bits
    src = Source(str(path), "x")
    _same(np.concatenate([b for _, _, b in _tiles(src, 4)], axis=1), want)
    src.close()
    sw = st.create_sharded(tmp_path / "s.index.json", "x", (6, 10), code, num_shards=2)
    for i in range(2):
        with sw.create_shard(i) as w:
            a, b = sw.shard_range(i)
            w["x"][...] = bits[a:b]
    with st.open_sharded(tmp_path / "s.index.json") as sa:
        _same(np.concatenate([b for _, _, b in _tiles(Source(sa, "x"), 3)], axis=1), want)
