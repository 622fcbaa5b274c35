"""Safe outputs (never through a planted symlink), memory checks before materialising, and the
journal cadence (journal_due) that bounds what a killed batching writer loses."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import daunce_fast.storage as st
from daunce_fast.storage import memory

VICTIM = b"precious bytes that must never change\n"


@pytest.fixture
def victim(tmp_path):
    p = tmp_path / "victim.txt"
    p.write_bytes(VICTIM)
    return p


def _plant(link, target):
    os.symlink(target, link)


def _unchanged(victim):
    assert victim.read_bytes() == VICTIM


def _write_small(path, **kw):
    with st.create(path, {"x": ((4, 3), "float32")}, **kw) as w:
        w["x"][...] = 1
        w.mark_done("t0")


# --------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("suffix", [".partial", ".partial.journal", ".partial.journal.tmp", ""])
def test_symlink_planted_at_output_path_is_refused(tmp_path, victim, suffix):
    out = tmp_path / "out.safetensors"
    _plant(str(out) + suffix, victim)
    with pytest.raises(st.UnsafePathError, match="symbolic link") as info:
        _write_small(out)
    assert str(out) + suffix in str(info.value)
    _unchanged(victim)
    assert os.path.islink(str(out) + suffix)  # the link itself is left alone too


@pytest.mark.parametrize("suffix", [".partial", ".partial.journal"])
def test_symlink_planted_before_resume_is_refused(tmp_path, victim, suffix):
    out = tmp_path / "out.safetensors"
    w = st.create(out, {"x": ((4, 3), "float32")})
    w.mark_done("t0")
    w.abort(keep=True)
    os.replace(str(out) + suffix, str(tmp_path / "moved"))
    _plant(str(out) + suffix, victim)
    with pytest.raises(st.UnsafePathError):
        st.create(out, {"x": ((4, 3), "float32")}, resume=True)
    _unchanged(victim)


def test_symlink_planted_at_final_path_after_create_is_refused_at_close(tmp_path, victim):
    out = tmp_path / "out.safetensors"
    w = st.create(out, {"x": ((2,), "float32")})
    _plant(out, victim)
    with pytest.raises(st.UnsafePathError):
        w.close()
    _unchanged(victim)
    w.abort()


def test_directory_or_fifo_at_output_paths_is_refused(tmp_path):
    out = tmp_path / "out.safetensors"
    out.mkdir()
    with pytest.raises(st.UnsafePathError, match="directory"):
        _write_small(out)
    out2 = tmp_path / "out2.safetensors"
    os.mkfifo(str(out2) + ".partial")
    with pytest.raises(st.UnsafePathError, match="FIFO"):
        _write_small(out2)


def test_sharded_index_and_its_temp_file_never_followed(tmp_path, victim, monkeypatch):
    idx = tmp_path / "s.index.json"
    _plant(idx, tmp_path / "missing-target.json")  # a dangling link: would be created through
    with pytest.raises(st.UnsafePathError):
        st.create_sharded(idx, "x", (4, 2), "float32", num_shards=2)
    assert not (tmp_path / "missing-target.json").exists()
    os.remove(idx)
    _plant(idx, victim)
    with pytest.raises(st.UnsafePathError):
        st.create_sharded(idx, "x", (4, 2), "float32", num_shards=2, overwrite=True)
    _unchanged(victim)
    os.remove(idx)
    import daunce_fast.storage.sharded as sh

    class _U:
        hex = "deadbeef" * 4

    monkeypatch.setattr(sh.uuid, "uuid4", lambda: _U())
    _plant(f"{idx}.{os.getpid()}.deadbeef.tmp", victim)
    with pytest.raises(st.UnsafePathError):
        st.create_sharded(idx, "x", (4, 2), "float32", num_shards=2)
    _unchanged(victim)


def test_normal_writes_still_work_and_leftover_journal_tmp_is_replaced(tmp_path):
    out = tmp_path / "out.safetensors"
    (tmp_path / "out.safetensors.partial.journal.tmp").write_bytes(b"left by a crash")
    _write_small(out)
    with st.open(out) as r:
        assert r["x"].sum() == 12
    _write_small(out)  # replacing our own complete file is fine
    assert not (tmp_path / "out.safetensors.partial.journal.tmp").exists()


# --------------------------------------------------------------------------------- memory
def test_check_fits_in_memory_raises_a_memory_error():
    if memory.available_memory() is None:
        pytest.skip("available memory unknown on this platform (nothing is checked there)")
    assert memory.available_memory() > 0
    with pytest.raises(st.InsufficientMemoryError, match="test matrix") as info:
        st.check_fits_in_memory(1 << 62, "test matrix")
    assert isinstance(info.value, MemoryError) and isinstance(info.value, st.StorageError)
    st.check_fits_in_memory(1 << 10, "small")


def test_whole_tensor_reads_check_declared_size_against_memory(tmp_path, monkeypatch):
    """A sparse file declaring a 64 MiB tensor, with 32 MiB 'available': every whole read refuses
    before allocating; tile reads still work."""
    path = tmp_path / "big.safetensors"
    with st.create(path, {"x": ((1024, 16384), "float32")}):  # sparse: nothing written
        pass
    monkeypatch.setattr(memory, "available_memory", lambda: 32 << 20)
    with st.open(path) as r:
        with pytest.raises(st.InsufficientMemoryError, match="'x'"):
            r.read("x")
        with pytest.raises(st.InsufficientMemoryError):
            r.float32("x")
        assert r.float32("x", (slice(None), slice(0, 64))).shape == (1024, 64)
        assert r.read("x", 3).shape == (16384,)
    sw = st.create_sharded(tmp_path / "s.index.json", "x", (1024, 16384), "float32", num_shards=2)
    for i in range(2):
        sw.create_shard(i).close()
    with st.open_sharded(tmp_path / "s.index.json") as sa:
        with pytest.raises(st.InsufficientMemoryError):
            sa.read()
        with pytest.raises(st.InsufficientMemoryError):
            sa.float32()
        assert sa.float32((slice(None), slice(0, 8))).shape == (1024, 8)


# ------------------------------------------------------------------------------ journal cadence
def test_journal_due_follows_the_clock(tmp_path):
    w = st.create(tmp_path / "a.safetensors", {"x": ((2,), "float32")}, journal_every=3600)
    assert not w.journal_due()
    w.abort()
    w = st.create(tmp_path / "b.safetensors", {"x": ((2,), "float32")}, journal_every=0.05)
    time.sleep(0.06)
    assert w.journal_due()
    w.mark_done("k")
    assert not w.journal_due()
    w.abort()
    with pytest.raises(ValueError):
        st.create(tmp_path / "c.safetensors", {"x": ((2,), "float32")}, journal_every=float("nan"))


_BATCHING_WRITER = textwrap.dedent("""
    import sys, time
    import daunce_fast.storage as st
    # A caller batching its journal entries by size (like correlate's 1 GiB batches, never
    # reached here) that also commits whenever journal_due() says so.
    w = st.create(sys.argv[1], {"x": ((200, 8), "float32")}, journal_every=0.1, durable=False)
    pending, batch_bytes = [], 0
    for i in range(200):
        w["x"][i] = i
        pending.append(i)
        batch_bytes += 32
        if batch_bytes >= 1 << 30 or w.journal_due():
            w.mark_done(*pending)
            pending, batch_bytes = [], 0
        print(i, flush=True)
        time.sleep(0.01)
    w.mark_done(*pending)
    w.close()
""")


def test_killed_batching_writer_resumes_from_its_last_seconds(tmp_path):
    out = str(tmp_path / "o.safetensors")
    proc = subprocess.Popen([sys.executable, "-c", _BATCHING_WRITER, out], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if int(line) >= 60:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out)
    with st.create(out, {"x": ((200, 8), "float32")}, resume=True) as w:
        done = w.done_keys()
        assert len(done) >= 30, f"only {len(done)} rows survived the kill"
        for i in done:
            np.testing.assert_array_equal(w["x"][i], i)
        for i in range(200):
            w["x"][i] = i
