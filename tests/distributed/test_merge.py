"""Single-process parts of daunce_fast.distributed: the top-k merge (exact semantics of
daunce_fast.topk), the splits, block-wise reading of stores, agreement with one rank, and
initialisation from torchrun / SLURM variables."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import daunce_fast as df
from daunce_fast import distributed as D
from daunce_fast import storage
from daunce_fast.correlation import sharded as S

from ._launch import ROOT, free_port

pytestmark = pytest.mark.filterwarnings("ignore::daunce_fast.correlation.ConstantColumnWarning")


def _brute(values, indices, k, largest):
    """Reference merge: sort the non-empty candidates by (score, index) in Python."""
    out_v, out_i = [], []
    for v_row, i_row in zip(values.tolist(), indices.tolist()):
        cands = sorted(((-v if largest else v, i) for v, i in zip(v_row, i_row) if i >= 0 and v == v))
        cands = cands[:k] + [(float("nan"), -1)] * (k - len(cands[:k]))
        out_v.append([(-s if largest else s) if i >= 0 else float("nan") for s, i in cands])
        out_i.append([i for _, i in cands])
    return np.array(out_v, np.float32), np.array(out_i, np.int64)


@pytest.mark.parametrize("largest", [True, False])
def test_merge_matches_a_sort_by_score_then_index(rng, largest):
    M, parts, c, k = 7, 3, 5, 6
    vals = rng.integers(-3, 4, size=(M, parts * c)).astype(np.float32)  # many exact ties
    idx = rng.permutation(1000)[: parts * c].repeat(M).reshape(parts * c, M).T.copy()
    idx[rng.random(idx.shape) < 0.2] = -1  # empty slots
    vals[rng.random(vals.shape) < 0.1] = np.nan  # NaN = empty too
    vals[0] = np.nan  # a row with no candidate at all
    v, i = D.merge_topk(torch.from_numpy(vals), torch.from_numpy(idx), k, largest)
    rv, ri = _brute(vals, idx, k, largest)
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_array_equal(v.numpy(), rv)
    assert (i[0] == -1).all() and torch.isnan(v[0]).all()


def test_merge_pads_when_fewer_candidates_than_k():
    v, i = D.merge_topk(torch.tensor([[0.5, 0.9]]), torch.tensor([[3, 8]]), 4)
    assert i.tolist() == [[8, 3, -1, -1]] and v[0, :2].tolist() == [pytest.approx(0.9), 0.5]


@pytest.mark.parametrize("method,largest", [("pearson", True), ("covariance", False)])
def test_merged_slices_equal_topk_of_the_whole(rng, method, largest):
    K, N, M, k = 12, 50, 6, 7
    A = rng.standard_normal((K, N))
    A[:, 30:36] = A[:, 3:9]  # duplicate columns across slices: exact ties, lower index first
    A[:, 11] = 2.0  # constant column
    B = rng.standard_normal((K, M))
    ref = df.topk(A, B, k, method=method, largest=largest, backend="torch")
    vals, idx = [], []
    for s0, s1 in [(0, 17), (17, 34), (34, 50)]:
        r = df.topk(A[:, s0:s1], B, k, method=method, largest=largest, backend="torch")
        vals.append(torch.as_tensor(r.values))
        idx.append(torch.where(torch.as_tensor(r.indices) >= 0, torch.as_tensor(r.indices) + s0, -1))
    v, i = D.merge_topk(torch.cat(vals, 1), torch.cat(idx, 1), k, largest)
    np.testing.assert_array_equal(i.numpy(), ref.indices)
    np.testing.assert_allclose(v.numpy(), ref.values, rtol=1e-6, atol=1e-7)


def test_split_and_share():
    assert D.split(10, 3) == [4, 3, 3] and D.split(2, 4) == [1, 1, 0, 0]
    assert [D.share(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_one_rank_reads_a_sharded_store_in_blocks(tmp_path, rng, monkeypatch):
    K, N, M = 8, 41, 5
    A = rng.standard_normal((K, N)).astype(np.float32)
    B = rng.standard_normal((K, M)).astype(np.float32)
    sw = storage.create_sharded(tmp_path / "a.index.json", "targets", A.shape, "float32", shard_sizes=[3, 5])
    for s in range(2):
        with sw.create_shard(s) as w:
            w["targets"][...] = A[slice(*sw.shard_range(s))]
    seen = []
    real = S._Matrix.cols
    monkeypatch.setattr(
        S._Matrix, "cols", lambda self, j0, j1, device=None: seen.append((j0, j1)) or real(self, j0, j1, device)
    )
    monkeypatch.setattr(S, "BLOCK_BYTES", 8 * K * 6)  # 6 columns per block
    r = D.topk(str(tmp_path / "a.index.json"), B, 4)
    ref = df.topk(A, B, 4)
    np.testing.assert_array_equal(r.indices, ref.indices)
    np.testing.assert_allclose(r.values, ref.values, rtol=1e-6, atol=1e-7)
    assert max(j1 - j0 for j0, j1 in seen if j1 - j0 < N) <= 6 and len(seen) >= 7
    full = D.correlate(str(tmp_path / "a.index.json"), B, out=tmp_path / "s.index.json")
    np.testing.assert_allclose(full[...], df.correlate(A, B), rtol=1e-6, atol=1e-7)
    slab = D.correlate(A, B)
    assert (slab.start, slab.stop) == (0, N)
    np.testing.assert_allclose(slab.scores, df.correlate(A, B), rtol=1e-6, atol=1e-7)


def test_outside_a_process_group():
    assert D.rank_world() == (0, 1) and not D.is_distributed()
    D.agree("nothing")
    assert D.run_on_all("x", lambda: 5) == 5
    with pytest.raises(KeyError):
        D.run_on_all("x", lambda: {}["missing"])


def test_init_from_env_needs_the_launcher_variables(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        D.init_from_env()


def test_init_from_slurm_variables():
    code = (
        "from daunce_fast import distributed as D; print(D.init_from_env(timeout_s=20)); "
        "import os; print(os.environ['LOCAL_RANK']); D.shutdown(); print(D.rank_world())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(
        SLURM_PROCID="0",
        SLURM_NTASKS="1",
        SLURM_LOCALID="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        PYTHONPATH=str(ROOT),
        CUDA_VISIBLE_DEVICES="",
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["(0,", "1)", "0", "(0,", "1)"]
