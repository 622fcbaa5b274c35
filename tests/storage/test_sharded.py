"""Sharded stores: index + shards written independently, one logical array for reading."""

import json
import os

import numpy as np
import pytest

import daunce_fast.storage as st


def _write_all(sw, want, order=None):
    for i in order if order is not None else range(sw.num_shards):
        lo, hi = sw.shard_range(i)
        with sw.create_shard(i) as w:
            idx = [slice(None)] * want.ndim
            idx[sw.axis] = slice(lo, hi)
            w[sw.name][...] = want[tuple(idx)]


def test_row_sharded_round_trip_and_tiles_across_boundaries(tmp_path, rng):
    K, N = 11, 37
    want = rng.standard_normal((K, N)).astype(np.float32)
    index = tmp_path / "loss.index.json"
    sw = st.create_sharded(index, "loss", (K, N), "float32", axis=0, shard_sizes=[4, 0, 5, 2], metadata={"K": str(K)})
    assert [sw.shard_range(i) for i in range(4)] == [(0, 4), (4, 4), (4, 9), (9, 11)]
    _write_all(sw, want, order=[3, 1, 0, 2])  # any order, like independent ranks
    idx = json.loads(open(index).read())
    assert idx["shape"] == [K, N] and idx["axis"] == 0 and idx["dtype"] == "F32"
    assert [s["file"] for s in idx["shards"]][0] == "loss-00000-of-00004.safetensors"
    with st.open_sharded(index) as x:
        assert x.shape == (K, N) and x.dtype == np.float32 and x.metadata == {"K": str(K)}
        np.testing.assert_array_equal(np.asarray(x), want)
        for key in [
            np.s_[:, 5:17],
            np.s_[3:10],
            np.s_[3:10, 2:4],
            np.s_[::3],
            np.s_[10:1:-2, ::-5],
            np.s_[4],
            np.s_[-1],
            np.s_[5, 7],
            np.s_[..., 3],
            np.s_[8, ...],
            np.s_[4:4],
            np.s_[:, 36:100],
            np.s_[...],
            np.s_[-3:],
            np.s_[9:2:-1],
            np.s_[::-1, 0],
        ]:
            got = x[key]
            assert isinstance(got, np.ndarray) and not isinstance(got, np.memmap) or np.ndim(got) == 0
            np.testing.assert_array_equal(got, want[key], err_msg=str(key))
        np.testing.assert_array_equal(x.shard(2), want[4:9])
        for bad in [np.s_[[1, 2]], np.s_[None], np.s_[1, 2, 3], np.s_[..., ...]]:
            with pytest.raises((TypeError, IndexError)):
                x[bad]
        with pytest.raises(IndexError):
            x[11]


def test_column_sharded_store_and_even_split(tmp_path, rng):
    want = rng.integers(0, 1000, size=(3, 10, 4), dtype=np.int64)
    sw = st.create_sharded(tmp_path / "s.index.json", "v", want.shape, np.int64, axis=1, num_shards=3)
    assert sw.shard_sizes == [4, 3, 3]
    _write_all(sw, want)
    x = st.open_sharded(tmp_path / "s.index.json")
    for key in [np.s_[:, 2:9], np.s_[1, ::2, 3], np.s_[:, 5], np.s_[..., 1:3], np.s_[:, ::-3]]:
        np.testing.assert_array_equal(x[key], want[key], err_msg=str(key))
    x.close()


def test_missing_or_incomplete_shard_is_named(tmp_path):
    index = tmp_path / "loss.index.json"
    sw = st.create_sharded(index, "loss", (6, 5), "float32", shard_sizes=[2, 2, 2])
    sw.create_shard(0).close()
    w1 = sw.create_shard(1)  # still being written
    with pytest.raises(st.IncompleteFileError, match="shard 1 of 3.*still being written"):
        st.open_sharded(index)
    w1.abort()
    with pytest.raises(st.IncompleteFileError, match="shard 1 of 3.*missing"):
        st.open_sharded(index)
    sw.create_shard(1).close()
    w2 = sw.create_shard(2)
    w2.abort(keep=True)
    with pytest.raises(st.IncompleteFileError, match="shard 2"):
        st.open_sharded(index)
    w2 = sw.create_shard(2, resume=True)
    assert w2.resumed
    w2.close()
    assert sw.complete_shards() == [0, 1, 2]
    with sw.open() as x:
        assert x.shape == (6, 5)


def test_index_layout_conflicts_and_shard_content_checks(tmp_path):
    index = tmp_path / "a.index.json"
    st.create_sharded(index, "a", (4, 4), "float32", num_shards=2)
    st.create_sharded(index, "a", (4, 4), "float32", shard_sizes=[2, 2])  # same layout: fine (every rank calls it)
    with pytest.raises(st.LayoutMismatchError, match="shape"):
        st.create_sharded(index, "a", (4, 5), "float32", num_shards=2)
    sw = st.create_sharded(index, "a", (4, 4), "float16", num_shards=2, overwrite=True)
    for bad in ([3, 2], [-1, 5]):
        with pytest.raises(ValueError):
            st.create_sharded(tmp_path / "b.index.json", "a", (4, 4), "float32", shard_sizes=bad)
    # a shard file holding the wrong tensor is corrupt, not silently reinterpreted
    with st.create(sw.shard_files[0], {"a": ((2, 4), "float32")}):
        pass
    sw.create_shard(1).close()
    with pytest.raises(st.CorruptFileError, match="shard 0"):
        st.open_sharded(index)


def test_corrupt_index(tmp_path):
    p = tmp_path / "x.index.json"
    good = {
        "format": "daunce_fast.sharded",
        "version": 1,
        "name": "a",
        "dtype": "F32",
        "shape": [4, 2],
        "axis": 0,
        "metadata": {},
        "shards": [{"file": "s0.safetensors", "offset": 0, "size": 4}],
    }
    for mutate, msg in [
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d.update(dtype="Q"), "dtype"),
        (lambda d: d["shards"][0].update(size=3), "cover"),
        (lambda d: d["shards"][0].update(file="../evil"), "relative"),
        (lambda d: d.update(axis=2), "axis"),
        (lambda d: d.update(metadata={"a": 1}), "strings"),
    ]:
        d = json.loads(json.dumps(good))
        mutate(d)
        p.write_text(json.dumps(d))
        with pytest.raises(st.CorruptFileError, match=msg):
            st.open_sharded(p)
    p.write_text("{not json")
    with pytest.raises(st.CorruptFileError, match="JSON"):
        st.open_sharded(p)


def test_open_any(tmp_path, rng):
    K, N = 5, 23
    want = rng.standard_normal((K, N)).astype(np.float32)
    single = tmp_path / "loss.safetensors"
    with st.create(single, {"loss": ((K, N), "float32")}) as w:
        w["loss"][...] = want
    sw = st.create_sharded(tmp_path / "loss.index.json", "loss", (K, N), "float32", shard_sizes=[2, 3])
    _write_all(sw, want)
    for src in (single, str(tmp_path / "loss.index.json")):
        with st.open_any(src) as store:
            assert store.names() == ["loss"] and store.shape("loss") == (K, N)
            np.testing.assert_array_equal(store["loss"][:, 3:9], want[:, 3:9])


def test_ranks_write_their_shards_in_parallel_processes(tmp_path):
    """Each 'rank' (a separate process) calls create_sharded with the same arguments and writes its
    own rows of a [K, N] matrix; the parent then reads the logical array."""
    import subprocess
    import sys
    import textwrap

    K, N, ranks = 10, 33, 3
    code = textwrap.dedent(f"""
        import sys, numpy as np
        import daunce_fast.storage as st
        rank = int(sys.argv[1])
        sw = st.create_sharded({str(tmp_path / "loss.index.json")!r}, "loss", ({K}, {N}), "float32", num_shards={ranks})
        lo, hi = sw.shard_range(rank)
        with sw.create_shard(rank) as w:
            for j0 in range(0, {N}, 8):
                j1 = min(j0 + 8, {N})
                w["loss"][:, j0:j1] = np.arange(lo, hi)[:, None] * 100 + np.arange(j0, j1)[None, :]
                w.mark_done(j0)
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(r)], env=env, stderr=subprocess.PIPE, text=True)
        for r in range(ranks)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    with st.open_sharded(tmp_path / "loss.index.json") as x:
        want = np.arange(K)[:, None] * 100.0 + np.arange(N)[None, :]
        np.testing.assert_array_equal(np.asarray(x), want)
        np.testing.assert_array_equal(x[:, 30:33], want[:, 30:33])
