"""A workdir never returns stale scores, never writes outside itself, never leaves temp files."""

import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch

from daunce_fast.daunce import Daunce, WorkdirError
from daunce_fast.daunce.pipeline import Daunce as _D  # noqa: F401  (the class the subprocesses import)

from ._tiny import OPTS, tiny_task


def fitted(tmp_path, name="run", **kw):
    model, train, test = tiny_task()
    d = Daunce(model, workdir=tmp_path / name, **{**OPTS, **kw})
    d.fit(train, record={"test": test})
    return d


def other_theta0(model):
    """The same architecture with other parameter values."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m


# ------------------------------------------------------------------ 1. fingerprints of everything
def test_other_theta0_same_architecture_is_refused_and_overwrite_starts_afresh(tmp_path):
    d = fitted(tmp_path)
    old = np.array(d.losses("train"))
    model, train, test = tiny_task()
    m2 = other_theta0(model)
    with pytest.raises(WorkdirError, match=r"differs in θ0.*overwrite=True"):
        Daunce(m2, workdir=tmp_path / "run", **OPTS).fit(train)
    with pytest.raises(WorkdirError, match="θ0"):  # by name: no stale scores either
        Daunce(m2, workdir=tmp_path / "run", **OPTS).scores("train", "test")
    d2 = Daunce(m2, workdir=tmp_path / "run", overwrite=True, **OPTS).fit(train, record={"test": test})
    ref = Daunce(m2, workdir=tmp_path / "ref", **OPTS).fit(train, record={"test": test})
    np.testing.assert_array_equal(d2.scores("train", "test"), ref.scores("train", "test"))
    assert not np.array_equal(np.array(d2.losses("train")), old)
    with pytest.raises(WorkdirError, match="recorded by another run"):  # the first object sees it is stale
        d.losses("train")


def test_train_set_with_most_features_replaced_is_refused(tmp_path):
    fitted(tmp_path)
    model, train, _ = tiny_task()
    x, y = train.tensors
    g = torch.Generator().manual_seed(0)
    noisy = x.clone().reshape(-1)
    pick = torch.randperm(noisy.numel(), generator=g)[: int(0.95 * noisy.numel())]
    noisy[pick] = torch.randn(len(pick), generator=g)
    noisy = torch.utils.data.TensorDataset(noisy.reshape(x.shape), y)
    with pytest.raises(WorkdirError, match='differs in dataset "train"'):
        Daunce(model, workdir=tmp_path / "run", **OPTS).fit(noisy)
    one = x.clone()
    one[17, 5] += 1e-3  # a single value changed anywhere: still another dataset
    with pytest.raises(WorkdirError, match='dataset "train"'):
        Daunce(model, workdir=tmp_path / "run", **OPTS).fit(torch.utils.data.TensorDataset(one, y))


def test_other_config_field_is_named(tmp_path):
    fitted(tmp_path)
    model, train, _ = tiny_task()
    with pytest.raises(WorkdirError, match=r"config field rho \(workdir 0.03, now 0.9\)"):
        Daunce(model, workdir=tmp_path / "run", **{**OPTS, "rho": 0.9}).fit(train)
    with pytest.raises(WorkdirError, match=r"num_models \(workdir 8, now 6\)"):
        Daunce(model, workdir=tmp_path / "run", **{**OPTS, "num_models": 6}).fit(train)


def test_other_test_set_under_a_recorded_name_is_refused(tmp_path):
    d = fitted(tmp_path)
    model, train, test = tiny_task()
    x, y = test.tensors
    other = torch.utils.data.TensorDataset(x.flip(0), y.flip(0))
    b = np.array(d.losses("test"))
    with pytest.raises(WorkdirError, match="another dataset"):
        Daunce(model, workdir=tmp_path / "run", **OPTS).fit(train, record={"test": other})
    with pytest.raises(WorkdirError, match="another dataset"):
        d.record(other, "test")
    d3 = Daunce(model, workdir=tmp_path / "run", overwrite=True, **OPTS)
    d3.record(other, "test")
    np.testing.assert_allclose(np.array(d3.losses("test")), b[:, ::-1], rtol=1e-6, atol=1e-7)


def test_dataset_fingerprint_is_full_and_order_sensitive():
    from daunce_fast.daunce.data import Examples

    x = torch.randn(1000, 64)
    y = torch.randint(0, 10, (1000,))
    fp = Examples((x,), y).fingerprint()
    assert fp == Examples((x.clone(),), y.clone()).fingerprint()
    for i in (0, 517, 999):  # every value counts, not a sample
        x2 = x.clone()
        x2[i, 63] = x2[i, 63] + 1
        assert Examples((x2,), y).fingerprint() != fp
    y2 = y.clone()
    y2[3] = (y2[3] + 1) % 10
    assert Examples((x,), y2).fingerprint() != fp
    assert Examples((x.double(),), y).fingerprint() != fp


# ------------------------------------------------------------------ 2. scores by name are checked
def test_scores_by_name_refuse_stale_stores(tmp_path):
    d = fitted(tmp_path)
    s = d.scores("train", "test")
    model, train, test = tiny_task()
    # another run's store copied over this one's "test": same shape, other targets
    other = fitted(tmp_path, "other", seed=4)
    os.replace(other.loss_path("test"), d.loss_path("test"))
    with pytest.raises(WorkdirError, match="recorded by another run"):
        Daunce(model, workdir=tmp_path / "run", **OPTS).scores("train", "test")
    # the train store of another training set under this run's state
    d4 = Daunce(model, workdir=tmp_path / "run", **OPTS)
    with pytest.raises(KeyError, match="nothing recorded under 'nope'"):
        d4.scores("train", "nope")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    state["train"] = "0" * 32
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    with pytest.raises(WorkdirError):
        Daunce(model, workdir=tmp_path / "run", **OPTS).scores("train", "train")
    assert np.isfinite(s).all()


# ------------------------------------------------------------------ 3. corrupt state.json
@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'"a string"',
        b"3",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"version": 2}',
        b'{"version": 2, "theta0": 1, "train": "", "config": {}, "num_models": 8, "chunk_size": 8}',
    ],
    ids=["not-json", "list", "string", "number", "not-utf8", "deep", "fields", "types"],
)
def test_corrupt_state_json_raises_workdir_error(tmp_path, content):
    model, train, test = tiny_task()
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "state.json").write_bytes(content)
    for call in (lambda d: d.fit(train), lambda d: d.scores("train", "test"), lambda d: d.record(test, "t")):
        with pytest.raises(WorkdirError, match=r"state\.json is not a valid Daunce state file.*overwrite=True"):
            call(Daunce(model, workdir=wd, **OPTS))
    d = Daunce(model, workdir=wd, overwrite=True, **OPTS).fit(train)  # the documented way out
    assert np.isfinite(np.array(d.losses("train"))).all()


def test_state_of_an_older_format_version_is_refused(tmp_path):
    fitted(tmp_path)
    p = tmp_path / "run" / "state.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "version": 1}))
    model, train, _ = tiny_task()
    with pytest.raises(WorkdirError, match="format version 1"):
        Daunce(model, workdir=tmp_path / "run", **OPTS).fit(train)


# ------------------------------------------------------------------ 4. new data under new chunking
@pytest.mark.parametrize("change", [dict(adapter_chunk=4), dict(row_budget=64)])
def test_record_and_score_after_changing_the_chunking(tmp_path, change):
    model, train, test = tiny_task()
    d = fitted(tmp_path, adapter_chunk=3)
    d2 = Daunce(model, workdir=tmp_path / "run", **{**OPTS, **change})
    assert d2.chunk_size() != 3
    d2.record(test, "later")  # adapters of chunks of 3 loaded as saved
    np.testing.assert_allclose(np.array(d2.losses("later")), np.array(d.losses("test")), rtol=1e-6, atol=1e-7)
    x, y = test.tensors
    new = torch.utils.data.TensorDataset(x[:7], y[:7])
    np.testing.assert_allclose(
        Daunce(model, workdir=tmp_path / "run", **{**OPTS, **change}).scores(train, new),
        d.scores("train", "test")[:, :7],
        rtol=1e-5,
        atol=1e-7,
    )
    with pytest.raises(WorkdirError, match=r"models per chunk \(workdir 3, now"):  # training must not mix chunkings
        Daunce(model, workdir=tmp_path / "run", **{**OPTS, **change}).fit(train)


# ------------------------------------------------------------------ 5. names stay inside the workdir
@pytest.mark.parametrize(
    "name", ["../../escaped", "..", ".", "", "/tmp/abs", "a/b", "a\\b", "a\x00b", ".hidden", "x" * 201]
)
def test_unsafe_store_names_are_refused(tmp_path, name):
    d = fitted(tmp_path)
    _, _, test = tiny_task()
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="invalid store name"):
        d.record(test, name)
    with pytest.raises(ValueError, match="invalid store name"):
        d.scores("train", name)
    with pytest.raises(ValueError, match="invalid store name"):
        Daunce(tiny_task()[0], workdir=tmp_path / "run2", **OPTS).fit(tiny_task()[1], record={name: test})
    assert sorted(p for p in tmp_path.rglob("*") if "run2" not in p.parts) == before
    assert not (tmp_path.parent / "escaped").exists()
    with pytest.raises(TypeError, match="must be a str"):
        d.record(test, 3)


# ------------------------------------------------------------------ 6. temporary workdirs
def _daunce_dirs(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("daunce_"))


def test_temporary_workdir_is_removed_on_close_gc_and_with(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, train, test = tiny_task()
    with Daunce(model, **OPTS) as d:
        d.fit(train)
        assert _daunce_dirs(tmp_path) == [d.workdir.name] and (d.workdir / "state.json").exists()
        s = d.scores(train, test)
    assert _daunce_dirs(tmp_path) == [] and np.isfinite(s).all()
    with pytest.raises(RuntimeError, match="closed"):
        d.scores(train, test)
    d = Daunce(model, **OPTS).fit(train)
    del d
    gc.collect()
    assert _daunce_dirs(tmp_path) == []
    with pytest.raises(ZeroDivisionError):  # an error mid-fit inside a with block
        with Daunce(model, loss_fn=lambda z, y: 1 / 0, **OPTS) as d:
            d.fit(train)
    assert _daunce_dirs(tmp_path) == []
    kept = Daunce(model, keep_workdir=True, **OPTS)
    kept.close()
    assert _daunce_dirs(tmp_path) == [kept.workdir.name]
    mine = tmp_path / "mine"
    Daunce(model, workdir=mine, **OPTS).fit(train).close()  # a given workdir is never deleted
    assert (mine / "state.json").exists()


@pytest.mark.parametrize("fail", [False, True])
def test_no_temporary_workdir_left_at_exit(tmp_path, fail):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        import daunce_fast.daunce.pipeline as P
        from tests.daunce._tiny import OPTS, tiny_task
        if {fail!r}:
            def boom(*a, **k):
                raise RuntimeError("killed mid-fit")
            P.record_chunk = boom
        model, train, test = tiny_task()
        d = P.Daunce(model, **OPTS)
        d.fit(train, record={{"test": test}})
        print(d.scores("train", "test").shape)
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert (res.returncode != 0) == fail, res.stderr
    assert ("killed mid-fit" in res.stderr) == fail
    assert _daunce_dirs(tmp_path) == []


# ------------------------------------------------------------------ 8. no write through a planted link
def test_symlink_planted_at_a_partial_loss_store_is_refused(tmp_path):
    from daunce_fast import storage

    model, train, test = tiny_task()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    wd = tmp_path / "run"
    (wd / "losses").mkdir(parents=True)
    os.symlink(victim, wd / "losses" / "train.safetensors.partial")
    with pytest.raises(storage.StorageError):
        Daunce(model, workdir=wd, **OPTS).fit(train)
    assert victim.read_text() == "precious"
    d = fitted(tmp_path, "ok")
    os.symlink(victim, d.workdir / "losses" / "later.safetensors.partial")
    with pytest.raises(storage.StorageError):
        d.record(test, "later")
    assert victim.read_text() == "precious"
