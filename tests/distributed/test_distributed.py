"""2 ranks on CPU (gloo), started like torchrun on 127.0.0.1 (two launches shared by the tests of
this module, since starting a rank costs seconds): the first launch runs Daunce.fit and rank 1 dies
in the middle; the second reruns it (resume), then records, scores, and runs distributed
topk / correlate on synthetic inputs. Results must equal the single-process ones."""

import numpy as np
import pytest

import daunce_fast as df
from daunce_fast import storage

from ._launch import check_ok, launch
from ._worker import OPTS, make_task

pytestmark = pytest.mark.filterwarnings("ignore::daunce_fast.correlation.ConstantColumnWarning")
TIMEOUT_S = 30  # collective timeout of the ranks: generous (the machine may be loaded); a dead peer is
# detected at once anyway (gloo: connection closed), which the test checks


def _inputs(path):
    rng = np.random.default_rng(7)
    K, N, M = 16, 61, 9
    A = rng.standard_normal((K, N)).astype(np.float32)
    B = rng.standard_normal((K, M)).astype(np.float32)
    A[:, 4] = 1.5  # constant train columns, one in each rank's half (never selected by pearson)
    A[:, 50] = -2.0
    B[:, 2] = 0.25  # a constant test column: no selectable candidate at all
    A_nan = A.copy()
    A_nan[5, 40] = np.nan  # in rank 1's half (columns 31..60)
    np.savez(path / "inputs.npz", A=A, B=B, A_nan=A_nan)
    sw = storage.create_sharded(path / "A.index.json", "targets", A.shape, "float32", shard_sizes=[9, 7])
    for i in range(2):  # a store sharded by rows, as the pipeline writes them
        with sw.create_shard(i) as w:
            w["targets"][...] = A[slice(*sw.shard_range(i))]
    return A, B


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist")
    A, B = _inputs(path)
    # rank 1 (chunks 2, 3) dies at its 4th record call: chunk 3 trained and recorded for "train" only
    first, _ = launch("fit_resume", path, timeout_s=TIMEOUT_S, deadline_s=120, env={"DIE_AT": "4"})
    msg = (path / "rank0.txt").read_text() if (path / "rank0.txt").exists() else None
    shards = {p.name for p in (path / "wd" / "losses").iterdir()}
    second, _ = launch("fit_resume", path, timeout_s=TIMEOUT_S, deadline_s=120)
    return dict(path=path, A=A, B=B, first=first, msg=msg, shards_after_death=shards, second=second)


def _ranks(runs, prefix):
    check_ok(runs["second"])
    return [dict(np.load(runs["path"] / f"{prefix}{r}.npz")) for r in range(2)]


def test_dead_rank_fails_its_peer_with_a_clear_error(runs):
    (rc0, _, err0), (rc1, _, _) = runs["first"]
    assert rc1 == 3 and rc0 == 1, err0[-3000:]
    msg = runs["msg"]
    assert msg is not None and msg.startswith("DistributedError"), msg
    assert "rank 0 of 2: Daunce.fit" in msg and "died" in msg and "resume" in msg, msg
    assert "DistributedError" in err0
    assert float(msg.split(" after ")[1].split("s:")[0]) < TIMEOUT_S  # failed when the peer died: no hang
    assert "train-00000-of-00002.safetensors" in runs["shards_after_death"]  # rank 0 finished its shard
    assert "train-00001-of-00002.safetensors" not in runs["shards_after_death"]  # rank 1's is partial
    assert "train-00001-of-00002.safetensors.partial" in runs["shards_after_death"]


def test_rerun_resumes_only_the_unfinished_work(runs):
    z0, z1 = _ranks(runs, "rank")
    assert (int(z0["records"]), int(z0["trains"])) == (0, 0)  # nothing left for rank 0
    assert (int(z1["records"]), int(z1["trains"])) == (1, 0)  # only chunk 3's test targets
    np.testing.assert_array_equal(z0["mine"], [0, 1])  # contiguous chunk ranges
    np.testing.assert_array_equal(z1["mine"], [2, 3])


def test_losses_equal_the_single_process_run(runs, tmp_path):
    from daunce_fast.daunce import Daunce

    model, train, test = make_task()
    d = Daunce(model, workdir=tmp_path / "single", **OPTS).fit(train, record={"test": test})
    a, b = np.array(d.losses("train")), np.array(d.losses("test"))
    for z in _ranks(runs, "rank"):
        np.testing.assert_allclose(z["train"], a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["test"], b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["later"], b, rtol=1e-5, atol=1e-6)
    wd = runs["path"] / "wd"
    with storage.open_sharded(wd / "losses" / "train.index.json") as x:  # one shard per rank: its models' rows
        assert x.shard_sizes == [4, 4] and x.shape == a.shape
    assert sorted(p.name for p in (wd / "adapters").iterdir()) == [f"chunk_{c:05d}.safetensors" for c in range(4)]
    assert not (wd / "losses" / "train.safetensors").exists()
    # a single process reads the distributed workdir's sharded stores
    np.testing.assert_array_equal(
        np.asarray(Daunce(model, workdir=wd, **OPTS).losses("train")[...]), _ranks(runs, "rank")[0]["train"]
    )
    # and records and scores new data after the world size changed (2 ranks -> 1 process), loading
    # the adapters as the ranks saved them (issue 13: this used to fail deep in loading)
    solo = Daunce(model, workdir=wd, **OPTS)
    solo.record(test, "solo")
    np.testing.assert_allclose(np.asarray(solo.losses("solo")[...]), b, rtol=1e-5, atol=1e-6)
    v, i = solo.scores("train", "solo", topk=3)
    ref = df.topk(a, b, 3, method="covariance")
    np.testing.assert_array_equal(i, ref.indices)


def test_daunce_scores_equal_single_process_scores(runs):
    for z in _ranks(runs, "rank"):  # scores of the sharded losses = daunce_fast's of the same losses
        ref = df.topk(z["train"], z["test"], 4, method="covariance")
        np.testing.assert_array_equal(z["i"], ref.indices)
        np.testing.assert_allclose(z["v"], ref.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["full"], df.correlate(z["train"], z["test"]), rtol=1e-5, atol=1e-6)
        assert "pass out=PATH" in str(z["no_out"])


def _same_topk(v, i, ref):
    rv, ri = np.asarray(ref.values), np.asarray(ref.indices)
    np.testing.assert_array_equal(np.isnan(v), np.isnan(rv))
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(i, ri)


def test_topk_and_correlate_equal_single_process(runs):
    A, B = runs["A"], runs["B"]
    ref_p = df.topk(A, B, 5, method="pearson")
    ref_c = df.topk(A, B, 4, method="covariance", largest=False)
    ref_t = df.topk(A, B, 3)
    full_p = df.correlate(A, B, method="pearson")
    full_c = df.correlate(A, B, method="covariance")
    for r, z in enumerate(_ranks(runs, "corr")):  # every rank holds the full merged result
        _same_topk(z["p_v"], z["p_i"], ref_p)
        _same_topk(z["c_v"], z["c_i"], ref_c)
        _same_topk(z["t_v"], z["t_i"], ref_t)
        np.testing.assert_array_equal(z["p_ct"], [4, 50])
        np.testing.assert_array_equal(z["p_cte"], [2])
        assert not np.isin(z["p_i"], [4, 50]).any()
        assert (z["p_i"][2] == -1).all() and np.isnan(z["p_v"][2]).all()
        s0, s1 = int(z["s0"]), int(z["s1"])
        assert (s0, s1) == [(0, 31), (31, 61)][r]
        np.testing.assert_allclose(z["s"], full_p[s0:s1], rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(z["full"], full_c, rtol=1e-5, atol=1e-6)
    with storage.open_sharded(runs["path"] / "corr_scores.index.json") as x:
        assert x.shape == (61, 9) and x.num_shards == 2 and x.shard_sizes == [31, 30]
        np.testing.assert_allclose(x[...], full_c, rtol=1e-5, atol=1e-6)


def test_bad_input_on_one_rank_raises_on_all(runs):
    z0, z1 = _ranks(runs, "corr")
    # rank 1 holds the NaN: it names the global position; rank 0 names rank 1 and its error
    assert str(z1["err"]).startswith("ValueError: train has a non-finite value nan at model 5, example 40 ")
    assert str(z0["err"]).startswith(
        "DistributedError: rank 0 of 2: topk: local candidates failed on rank 1: "
        "ValueError: train has a non-finite value nan at model 5, example 40 "
    )
