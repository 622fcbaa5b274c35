"""Crash safety and resume: exceptions, SIGKILL mid-write, layout checks, locking."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

import daunce_fast.storage as st
from daunce_fast.storage.format import encode_header, plan_layout

K, N, TILE = 6, 200, 16
NTILES = -(-N // TILE)


def expected(j0, j1):
    return (np.arange(j0, j1)[None, :] * 1000.0 + np.arange(K)[:, None] + 0.5).astype(np.float32)


CHILD = f"""
import sys, time
import numpy as np
import daunce_fast.storage as st
path, mode, stop_at, durable = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
K, N, TILE = {K}, {N}, {TILE}
def expected(j0, j1):
    return (np.arange(j0, j1)[None, :] * 1000.0 + np.arange(K)[:, None] + 0.5).astype(np.float32)
w = st.create(path, {{"loss": ((K, N), "float32")}}, metadata={{"job": "crash"}}, resume=True, durable=durable)
for t, j0 in enumerate(range(0, N, TILE)):
    j1 = min(j0 + TILE, N)
    if mode == "mid" and t == stop_at:
        w["loss"][: K // 2, j0:j1] = expected(j0, j1)[: K // 2]  # half a tile, never marked
        print("midwrite", flush=True)
        time.sleep(120)
    w["loss"][:, j0:j1] = expected(j0, j1)
    w.mark_done(t)
    print("done", t, flush=True)
    if mode == "loop":
        time.sleep(0.01)
w.close()
print("closed", flush=True)
"""


def _run_child_and_kill(path, mode, stop_at, kill_after_done=None, durable=True):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", CHILD, str(path), mode, str(stop_at), "1" if durable else "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.startswith("midwrite") or line.strip() == f"done {kill_after_done}":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (seen, proc.stderr.read())
    return seen


def _resume_and_finish(path):
    w = st.create(path, {"loss": ((K, N), "float32")}, metadata={"job": "crash"}, resume=True)
    assert w.resumed
    done = w.done_keys()
    # everything marked done survived the kill: data and key
    for t in done:
        j0 = t * TILE
        np.testing.assert_array_equal(w["loss"][:, j0 : j0 + TILE], expected(j0, min(j0 + TILE, N)))
    redone = 0
    for t, j0 in enumerate(range(0, N, TILE)):
        if w.is_done(t):
            continue
        w["loss"][:, j0 : j0 + TILE] = expected(j0, min(j0 + TILE, N))
        w.mark_done(t)
        redone += 1
    w.close()
    return done, redone


def _check_final(path):
    with st.open(path) as r:
        np.testing.assert_array_equal(r["loss"], expected(0, N))
        assert r.metadata == {"job": "crash"}
    assert not os.path.exists(str(path) + ".partial")
    assert not os.path.exists(str(path) + ".partial.journal")


@pytest.mark.parametrize("durable", [True, False])
def test_sigkill_mid_tile_then_resume(tmp_path, durable):
    """durable=False skips fsync: a killed process still loses nothing (the page cache survives it)."""
    path = tmp_path / "loss.safetensors"
    stop_at = 5
    seen = _run_child_and_kill(path, "mid", stop_at, durable=durable)
    assert seen[-1] == "midwrite" and f"done {stop_at - 1}" in seen
    assert not os.path.exists(path)
    with pytest.raises(st.IncompleteFileError, match="partial"):
        st.open(path)
    with pytest.raises(st.IncompleteFileError):
        st.open(str(path) + ".partial")
    done, redone = _resume_and_finish(path)
    assert done == set(range(stop_at))  # exactly the marked tiles; the half-written one is not
    assert redone == NTILES - stop_at
    _check_final(path)


def test_sigkill_at_an_arbitrary_point_then_resume(tmp_path):
    path = tmp_path / "loss.safetensors"
    _run_child_and_kill(path, "loop", 0, kill_after_done=3)  # the child keeps going until the kill lands
    with pytest.raises(st.IncompleteFileError):
        st.open(path)
    done, redone = _resume_and_finish(path)
    assert set(range(4)) <= done and len(done) + redone == NTILES
    _check_final(path)


def test_exception_in_with_leaves_partial_and_resume_continues(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError):
        with st.create(path, {"loss": ((K, N), "float32")}, metadata={"job": "crash"}) as w:
            w["loss"][:, :TILE] = expected(0, TILE)
            w.mark_done(0)
            arr = w["loss"]  # an array still alive must not keep the file locked
            raise RuntimeError("boom")
    assert w.closed and not os.path.exists(path)
    assert os.path.exists(str(path) + ".partial") and os.path.exists(str(path) + ".partial.journal")
    with pytest.raises(st.IncompleteFileError):
        st.open(path)
    # official readers would accept the partial file's bytes, which is why it never has the final name
    with safe_open(str(path) + ".partial", "np") as f:
        assert f.metadata()["daunce_fast.complete"] == "0"
    done, redone = _resume_and_finish(path)
    assert done == {0} and redone == NTILES - 1
    _check_final(path)
    del arr


def test_resume_with_a_different_layout_raises(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((4, 5), "float32")}, metadata={"m": "1"})
    w.mark_done("t0")
    w.abort(keep=True)
    for tensors, meta, what in [
        ({"a": ((4, 6), "float32")}, {"m": "1"}, "F32\\[4, 5\\], requested F32\\[4, 6\\]"),
        ({"a": ((4, 5), "float16")}, {"m": "1"}, "F16"),
        ({"b": ((4, 5), "float32")}, {"m": "1"}, "'b' is new"),
        ({"a": ((4, 5), "float32")}, {"m": "2"}, "metadata differs"),
    ]:
        with pytest.raises(st.LayoutMismatchError, match=what):
            st.create(path, tensors, metadata=meta, resume=True)
    # the right layout still resumes, done keys intact
    w = st.create(path, {"a": ((4, 5), "float32")}, metadata={"m": "1"}, resume=True)
    assert w.done_keys() == {"t0"}
    w.close()


def test_resume_without_partial_starts_fresh_and_resume_false_discards(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((3,), "int64")}, resume=True)
    assert not w.resumed and w.done_keys() == set()
    w["a"][:] = [1, 2, 3]
    w.mark_done(1, "two")
    w.abort(keep=True)
    w = st.create(path, {"a": ((3,), "int64")}, resume=False)  # discards data and keys
    assert not w.resumed and w.done_keys() == set()
    np.testing.assert_array_equal(w["a"], [0, 0, 0])
    w.abort()
    assert not os.path.exists(str(path) + ".partial") and not os.path.exists(str(path) + ".partial.journal")


def test_keys_int_and_str_are_distinct_and_validated(tmp_path):
    w = st.create(tmp_path / "x.safetensors", {"a": ((1,), "float32")})
    w.mark_done(1)
    w.mark_done(np.int64(2))
    w.mark_done("1")
    assert w.done_keys() == {1, 2, "1"} and w.is_done(np.int32(2)) and not w.is_done("2")
    for bad in (1.5, None, True, (1, 2)):
        with pytest.raises(TypeError):
            w.mark_done(bad)
    w.abort(keep=True)
    w = st.create(tmp_path / "x.safetensors", {"a": ((1,), "float32")}, resume=True)
    assert w.done_keys() == {1, 2, "1"}
    w.abort()


def test_torn_journal_line_is_ignored(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((1,), "float32")})
    w.mark_done(7)
    w.abort(keep=True)
    with open(str(path) + ".partial.journal", "ab") as f:
        f.write(b"deadbeef 8\n0000")  # bad checksum, then a torn line
    w = st.create(path, {"a": ((1,), "float32")}, resume=True)
    assert w.done_keys() == {7}
    w.mark_done(9)  # appends on a fresh line after the torn one
    w.abort(keep=True)
    w = st.create(path, {"a": ((1,), "float32")}, resume=True)
    assert w.done_keys() == {7, 9}
    w.abort()


def test_stale_journal_of_another_layout_is_not_trusted(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((2,), "float32")})
    w.mark_done(0)
    w.abort(keep=True)
    journal = open(str(path) + ".partial.journal", "rb").read()
    w = st.create(path, {"a": ((3,), "float32")})  # fresh, different layout
    w.abort(keep=True)
    with open(str(path) + ".partial.journal", "wb") as f:
        f.write(journal)  # a journal from the first layout beside the second's partial file
    w = st.create(path, {"a": ((3,), "float32")}, resume=True)
    assert w.resumed and w.done_keys() == set()
    w.abort()


def test_crash_between_header_rewrite_and_rename(tmp_path):
    """close() marks the header complete, then renames; a crash in between leaves a .partial that
    says complete. Resume must work (and mark it incomplete again while writing)."""
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((4,), "float32")})
    w["a"][:] = 1
    w.mark_done(0)
    w.abort(keep=True)
    layout = plan_layout({"a": ((4,), "float32")})
    with open(str(path) + ".partial", "r+b") as f:
        hlen = int.from_bytes(f.read(8), "little")
        f.seek(0)
        f.write(encode_header(layout, {}, complete=True, header_len=hlen))
    w = st.create(path, {"a": ((4,), "float32")}, resume=True)
    assert w.done_keys() == {0}
    with open(str(path) + ".partial", "rb") as f:
        assert b'"daunce_fast.complete":"0"' in f.read(4096)
    w.close()
    with st.open(path) as r:
        np.testing.assert_array_equal(r["a"], 1)


def test_second_writer_on_same_partial_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.create(path, {"a": ((4,), "float32")})
    with pytest.raises(st.FileLockedError):
        st.create(path, {"a": ((4,), "float32")}, resume=True)
    with pytest.raises(st.FileLockedError):
        st.create(path, {"a": ((4,), "float32")})  # nor may a fresh writer clobber it
    w.close()
    st.create(path, {"a": ((4,), "float32")}).close()  # after close the name is free again


def test_close_replaces_an_existing_final_file_atomically(tmp_path):
    path = tmp_path / "x.safetensors"
    with st.create(path, {"a": ((2,), "int32")}) as w:
        w["a"][:] = [1, 2]
    old = st.open(path)
    old_a = old["a"]
    with st.create(path, {"a": ((2,), "int32")}) as w:
        w["a"][:] = [3, 4]
        with st.open(path) as r:  # while writing, readers see the previous complete file
            np.testing.assert_array_equal(r["a"], [1, 2])
    np.testing.assert_array_equal(old_a, [1, 2])  # an old reader keeps its inode
    with st.open(path) as r:
        np.testing.assert_array_equal(r["a"], [3, 4])
    old.close()


def test_preallocate_reserves_blocks_and_resumes(tmp_path):
    path = tmp_path / "p.safetensors"
    w = st.create(path, {"a": ((256, 1024), "float32")}, preallocate=True)
    assert os.stat(str(path) + ".partial").st_blocks * 512 >= 256 * 1024 * 4
    w["a"][:2] = 1
    w.mark_done(0)
    w.abort(keep=True)
    w = st.create(path, {"a": ((256, 1024), "float32")}, preallocate=True, resume=True)
    assert w.done_keys() == {0} and (w["a"][:2] == 1).all()  # fallocate keeps written data
    w.close()
    with st.open(path) as r:
        assert r["a"][:2].sum() == 2 * 1024 and not r["a"][2:].any()
