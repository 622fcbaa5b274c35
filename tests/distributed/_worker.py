"""One rank of a distributed test scenario (started by _launch.launch with torchrun's variables).

Usage: python -m tests.distributed._worker SCENARIO OUTDIR. Results go to OUTDIR/rank<r>.npz (or
.txt); an uncaught error prints its traceback and exits 1, as under torchrun.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from daunce_fast import distributed as D
from daunce_fast.correlation import sharded as S


def scenario_corr(rank, world, out: Path):
    """distributed topk / correlate on numpy, torch and sharded inputs; errors on bad input."""
    block, S.BLOCK_BYTES = (
        S.BLOCK_BYTES,
        8 * 16 * 7,
    )  # 7 train columns per block for stores, tiny gather blocks: many blocks
    z = np.load(out / "inputs.npz")
    A, B, A_nan = z["A"], z["B"], z["A_nan"]
    res = {}
    r = D.topk(A, B, 5, method="pearson")
    res.update(p_v=r.values, p_i=r.indices, p_ct=r.constant_train, p_cte=r.constant_test)
    r = D.topk(str(out / "A.index.json"), B, 4, method="covariance", largest=False)
    res.update(c_v=r.values, c_i=r.indices)
    r = D.topk(torch.from_numpy(A), torch.from_numpy(B), 3)
    assert isinstance(r.values, torch.Tensor) and isinstance(r.indices, torch.Tensor)
    res.update(t_v=r.values.numpy(), t_i=r.indices.numpy())
    slab = D.correlate(A, B, method="pearson")
    res.update(s0=slab.start, s1=slab.stop, s=slab.scores)
    full = D.correlate(str(out / "A.index.json"), B, method="covariance", out=out / "corr_scores.index.json")
    res.update(full=full[...])
    try:
        D.topk(A_nan, B, 3)
        res["err"] = "no error"
    except Exception as exc:
        res["err"] = f"{type(exc).__name__}: {exc}"
    S.BLOCK_BYTES = block
    np.savez(out / f"corr{rank}.npz", **res)


OPTS = dict(num_models=8, epochs=1, batch_size=16, lr=1e-2, seed=3, adapter_chunk=2)


def make_task():
    """A tiny random classification task, torch only (the same in every process): θ0 need not be
    trained for the pipeline to be exercised, and sklearn / a θ0 fit would cost seconds per rank."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 12, generator=g), torch.randint(0, 4, (96,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    train = torch.utils.data.TensorDataset(x[:72], y[:72])
    test = torch.utils.data.TensorDataset(x[72:], y[72:])
    return model, train, test


def _count(module, name, calls):
    real = getattr(module, name)

    def counted(*a, **k):
        calls.append(name)
        if (
            os.environ.get("DIE_AT")
            and rank_env() == 1
            and len([c for c in calls if c == "record_chunk"]) == int(os.environ["DIE_AT"])
        ):
            os._exit(3)  # rank 1 dies abruptly (no exception, no cleanup), like a killed process
        return real(*a, **k)

    setattr(module, name, counted)


def rank_env() -> int:
    return int(os.environ["RANK"])


def scenario_fit_resume(rank, world, out: Path):
    """fit that rank 1 may abandon (DIE_AT=n: os._exit at its n-th record_chunk); counts work done;
    then record later, scores (topk and sharded full)."""
    import daunce_fast.daunce.pipeline as P

    model, train, test = make_task()
    calls = []
    _count(P, "record_chunk", calls)
    _count(P, "train_chunk", calls)
    d = P.Daunce(model, workdir=out / "wd", **OPTS)
    t0 = time.monotonic()
    try:
        d.fit(train, record={"test": test})
    except Exception as exc:
        (out / f"rank{rank}.txt").write_text(f"{type(exc).__name__} after {time.monotonic() - t0:.1f}s: {exc}")
        raise
    res = dict(
        train=np.asarray(d.losses("train")[...]),
        test=np.asarray(d.losses("test")[...]),
        records=calls.count("record_chunk"),
        trains=calls.count("train_chunk"),
        mine=np.array([c for c, _ in d.my_chunks()]),
    )
    d.record(test, "later")
    res.update(later=np.asarray(d.losses("later")[...]))
    v, i = d.scores("train", "test", topk=4)
    full = d.scores("train", "test", method="pearson", out=str(out / "scores.index.json"))
    res.update(v=v, i=i, full=full[...])
    try:  # a full in-memory matrix on every rank is what sharding avoids: it must ask for out=PATH
        d.scores("train", "test")
        res["no_out"] = "no error"
    except ValueError as exc:
        res["no_out"] = str(exc)
    np.savez(out / f"rank{rank}.npz", **res)
    if (out / "inputs.npz").exists():
        scenario_corr(rank, world, out)


def main():
    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    rank, world = D.init_from_env(timeout_s=float(os.environ.get("DAUNCE_TEST_TIMEOUT", "20")))
    try:
        globals()[f"scenario_{scenario}"](rank, world, out)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # like a crashed rank: no collective shutdown that could wait on the peers
    D.shutdown()


if __name__ == "__main__":
    main()
