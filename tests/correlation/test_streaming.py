"""Streaming: full scores into a safetensors file (resumable), storage readers / paths as inputs."""

import numpy as np
import pytest
import safetensors.numpy
import torch

import daunce_fast
from daunce_fast import storage
from daunce_fast.correlation.reference import correlate_reference, topk_reference
from daunce_fast.testing import assert_close_to_reference

from ._helpers import assert_topk_matches, live_cpu_backends

BACKENDS = live_cpu_backends()


def _losses(rng, K, N, M):
    return (rng.standard_normal((K, N)) + 2).astype(np.float32), rng.standard_normal((K, M)).astype(np.float32)


def _interrupted_after(real, n: int, calls: dict):
    """``real`` (api._train_tiles) that raises KeyboardInterrupt before its (n+1)-th tile, like a
    killed job; ``calls["n"]`` counts the tiles handed out (reset it to interrupt again)."""

    def tiles(*args, **kw):
        for item in real(*args, **kw):
            if calls["n"] == n:
                raise KeyboardInterrupt
            calls["n"] += 1
            yield item

    return tiles


def _counting(real, seen: list):
    """``real`` (api._train_tiles) that records the first column of every tile it computes."""

    def tiles(*args, **kw):
        for item in real(*args, **kw):
            seen.append(item[0])
            yield item

    return tiles


@pytest.mark.parametrize("backend", BACKENDS)
def test_correlate_to_file(tmp_path, rng, backend):
    a, b = _losses(rng, 9, 301, 17)
    path = tmp_path / "scores.safetensors"
    s = daunce_fast.correlate(a, b, out=path, backend=backend, tile=64)
    assert isinstance(s, np.memmap) and not s.flags.writeable and s.shape == (301, 17)
    ref = correlate_reference(a, b).numpy()
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)
    loaded = safetensors.numpy.load_file(str(path))["scores"]  # the official reader accepts it
    assert np.array_equal(loaded, np.asarray(s))
    assert storage.open(path).metadata["method"] == "pearson"
    # torch inputs -> torch view of the file; bfloat16 files
    t = daunce_fast.correlate(
        torch.from_numpy(a), torch.from_numpy(b), out=tmp_path / "bf.safetensors", out_dtype="bfloat16", backend=backend
    )
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16
    assert_close_to_reference(t, ref, "bfloat16", rtol=0, atol=8e-3)


def test_resume_after_interruption(tmp_path, rng, monkeypatch):
    a, b = _losses(rng, 6, 500, 11)
    path = tmp_path / "scores.safetensors"
    from daunce_fast.correlation import api

    calls = {"n": 0}
    real = api._train_tiles
    monkeypatch.setattr(api, "_train_tiles", _interrupted_after(real, 4, calls))  # dies after 4 tiles
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)  # ~256 MiB batching: nothing durable yet
    monkeypatch.setattr(api, "_MARK_EVERY", 1)  # make each tile durable, then interrupt again
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)
    assert not path.exists() and (tmp_path / "scores.safetensors.partial").exists()
    monkeypatch.setattr(api, "_train_tiles", real)
    seen = []
    monkeypatch.setattr(api, "_train_tiles", _counting(real, seen))
    s = daunce_fast.correlate(a, b, out=path, tile=32)
    assert seen[0] == 4 * 32 and len(seen) == 16 - 4  # the 4 durable tiles were skipped
    assert_close_to_reference(s, correlate_reference(a, b).numpy(), "float32", rtol=0, atol=1e-6)
    assert not (tmp_path / "scores.safetensors.partial").exists()


def test_resume_with_other_test_data_refuses(tmp_path, rng, monkeypatch):
    a, b = _losses(rng, 4, 100, 5)
    path = tmp_path / "s.safetensors"
    from daunce_fast.correlation import api

    def boom(*args, **kw):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(api, "_train_tiles", boom)
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path)
    monkeypatch.undo()
    with pytest.raises(storage.LayoutMismatchError):
        daunce_fast.correlate(a, b + 1, out=path)
    s = daunce_fast.correlate(a, b + 1, out=path, resume=False)
    assert s.shape == (100, 5)


def test_bad_input_removes_partial_file(tmp_path, rng):
    a, b = _losses(rng, 4, 100, 5)
    a[1, 90] = np.nan
    path = tmp_path / "s.safetensors"
    with pytest.raises(ValueError, match="example 90"):
        daunce_fast.correlate(a, b, out=path, tile=16)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("backend", BACKENDS)
def test_storage_inputs_read_in_tiles(tmp_path, rng, backend):
    a, b = _losses(rng, 7, 333, 12)
    with storage.create(tmp_path / "train.safetensors", {"losses": (a.shape, "float32")}) as w:
        w["losses"][:] = a
    with storage.create(tmp_path / "test.safetensors", {"losses": (b.shape, "bfloat16")}) as w:
        w["losses"][:] = storage.float32_to_bf16_bits(b)
    b16 = storage.bf16_bits_to_float32(storage.float32_to_bf16_bits(b))
    ref = correlate_reference(a, b16).numpy()
    s = daunce_fast.correlate(
        str(tmp_path / "train.safetensors"), tmp_path / "test.safetensors", backend=backend, tile=50
    )
    assert isinstance(s, np.ndarray)
    assert_close_to_reference(s, ref, "float32", rtol=0, atol=1e-6)
    reader = storage.open(tmp_path / "train.safetensors")
    v, i = daunce_fast.topk(reader, b16, 9, backend=backend, tile=50)
    assert_topk_matches(v, i, ref, 9, tol=1e-5)
    v2, i2 = daunce_fast.topk(reader["losses"], torch.from_numpy(b16), 9, backend=backend, tile=50)
    assert isinstance(v2, torch.Tensor) and np.array_equal(i2.numpy(), i)


def test_storage_input_with_several_tensors_needs_the_array(tmp_path, rng):
    a, b = _losses(rng, 3, 10, 2)
    with storage.create(tmp_path / "two.safetensors", {"x": (a.shape, "float32"), "y": (b.shape, "float32")}) as w:
        w["x"][:] = a
        w["y"][:] = b
    with pytest.raises(ValueError, match="2 tensors"):
        daunce_fast.correlate(tmp_path / "two.safetensors", b)
    r = storage.open(tmp_path / "two.safetensors")
    s = daunce_fast.correlate(r["x"], r["y"])
    assert_close_to_reference(s, correlate_reference(a, b).numpy(), "float32", rtol=0, atol=1e-6)


def test_sharded_train_input(tmp_path, rng):
    """A sharded store (an index over files, one per chunk of models) read through its index path."""
    a, b = _losses(rng, 5, 90, 6)
    w = storage.create_sharded(tmp_path / "idx.json", "losses", a.shape, "float32", axis=0, num_shards=2)
    for i in range(2):
        r0, r1 = w.shard_range(i)
        with w.create_shard(i) as sw:
            sw["losses"][:] = a[r0:r1]
    s = daunce_fast.correlate(tmp_path / "idx.json", b, tile=32)
    assert_close_to_reference(s, correlate_reference(a, b).numpy(), "float32", rtol=0, atol=1e-6)
    v, i = daunce_fast.topk(tmp_path / "idx.json", b, 4, tile=32)
    rv, ri = topk_reference(a, b, 4)
    np.testing.assert_allclose(v, rv.numpy(), atol=1e-6)


def test_small_output_journals_by_time_not_only_by_bytes(tmp_path, rng, monkeypatch):
    """An output far under the 1 GiB batching still becomes durable when the writer's clock says so
    (storage.Writer.journal_due), so a killed run resumes from its last seconds, not from zero."""
    a, b = _losses(rng, 6, 500, 11)
    path = tmp_path / "scores.safetensors"
    from daunce_fast.correlation import api
    from daunce_fast.storage.writer import Writer

    monkeypatch.setattr(Writer, "journal_due", lambda self: True)  # as if every tile took journal_every seconds
    real = api._train_tiles
    monkeypatch.setattr(api, "_train_tiles", _interrupted_after(real, 5, {"n": 0}))
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)
    seen = []
    monkeypatch.setattr(api, "_train_tiles", _counting(real, seen))
    s = daunce_fast.correlate(a, b, out=path, tile=32)
    assert seen[0] == 5 * 32 and len(seen) == 16 - 5
    assert_close_to_reference(s, correlate_reference(a, b).numpy(), "float32", rtol=0, atol=1e-6)
