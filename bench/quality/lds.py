"""LDS benchmark: attribution quality (linear datamodeling score) and wall time of DAUNCE through
daunce_fast beside dattri's TRAK and influence functions, on bundled tabular tasks.

    PYTHONPATH=$PWD python bench/quality/lds.py --dataset digits --dataset breast_cancer \
        --methods graddot,trak1,trak5,if [--trak-reg 0,1e-3,1e-2,1e-1,1] [--if-damping ...]
    PYTHONPATH=$PWD python bench/quality/lds.py --dataset digits --methods daunce \
        --K 64,256,1024,2048 --objective if,efim --score-method pearson,covariance \
        --rho 0.3,1 --epochs 1,5,20 [--lr 1e-3] [--optimizer adam] [--ratio 0.5]

Ground truth: bench/out/lds_<dataset>.pt from bench/quality/lds_data.py (built on first use;
--ground-truth PATH reads another file). LDS as in
dattri: targets are negative test losses, predicted = sum of scores over each subset, Spearman
per test example across subsets, mean ignoring NaN (daunce_fast.evaluation.metrics.lds). Every method's
scores are [N_train, N_test] with positive = helpful.

Prints one table row per method and hyper-parameter setting (dataset, method, params, lds,
lds_all, nan_tests, nonfinite_scores, wall_s, extra_s; see _lds) and appends the rows to
bench/out/results.jsonl (bench/harness.record; DAUNCE_FAST_BENCH_OUT moves bench/out).
wall_s is the attribution itself (θ0 is given), cpu_s its CPU seconds (all threads; robust to
other processes sharing the cores, which inflate wall_s); extra_s is what the method needs on top, here the
plain sequential training (daunce_fast.demos.tasks.train_classifier) of TRAK's extra checkpoints.
Hyper-parameters (TRAK/IF damping, DAUNCE settings) are chosen on the same ground truth they are
scored on, for every method alike: best-of-grid numbers are mildly optimistic for all of them.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent, HERE.parents[1]):  # this folder (lds_data), bench/ (the harness), the repo root
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from harness import OUT, print_table, record  # noqa: E402
from lds_data import load_or_build, load_task, model_from_state  # noqa: E402

from daunce_fast.evaluation.baselines import ExactIF, grad_dot, if_dattri, trak  # noqa: E402
from daunce_fast.evaluation.metrics import lds  # noqa: E402

CACHE = OUT  # where the exact-IF Hessian eigendecomposition is cached (bench/out by default)
METHODS = ("graddot", "trak1", "trak5", "if", "if-dattri", "daunce")


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _strs(s: str) -> list[str]:
    return [v for v in s.split(",") if v]


def _lds(gt, scores) -> tuple[float, int, int]:
    """(mean LDS, test examples with NaN LDS, non-finite scores zeroed, lds_all).

    Non-finite scores (DAUNCE's Pearson/covariance give NaN for an example whose recorded loss is
    identical in every model) are replaced by 0, "no evidence", before the LDS: kept, dattri's
    rule would void every test column that meets a NaN training row. Their count is reported.
    """
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(scores)
    n_bad = int(bad.sum())
    if n_bad:
        scores = np.where(bad, 0.0, scores)
    per, mean = lds(scores, gt["subsets"], gt["targets"])
    # lds_all: over every test example whose ground truth varies, a NaN (the method gave that test
    # example constant scores, e.g. DAUNCE when its recorded loss rounds to the same value in every
    # model) counting as 0. The dattri-style mean skips them, so two methods' `lds` can be means over
    # different test sets; lds_all is always over the same ones.
    defined = np.asarray(gt["targets"], dtype=np.float64).std(0) > 0
    lds_all = float(np.nan_to_num(per[defined], nan=0.0).mean())
    return mean, int(np.isnan(per).sum()), n_bad, lds_all


def _kv(s: str) -> tuple[str, object]:
    import json

    k, _, v = s.partition("=")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def _row(dataset, method, params, score, wall, extra=0.0, **more):
    val, nan, n_bad, val_all = score
    return {
        "dataset": dataset,
        "method": method,
        "params": params,
        "lds": val,
        "lds_all": val_all,
        "nan_tests": nan,
        "nonfinite_scores": n_bad,
        "wall_s": wall,
        "extra_s": extra,
        **more,
    }


def plain_train_seconds(gt) -> tuple[float, float]:
    """(wall, CPU) seconds for one plain sequential training with the ground truth's recipe (what a TRAK user
    pays per extra checkpoint)."""
    from daunce_fast.demos.tasks import mlp, train_classifier

    r = gt["recipe"]
    task = load_task(gt)
    m = mlp(task.x_train.shape[1], task.num_classes, r["hidden"], r["depth"], seed=r["seed"] + 100)
    t0, c0 = time.perf_counter(), time.process_time()
    train_classifier(
        m,
        task.x_train,
        task.y_train,
        epochs=r["epochs"],
        lr=r["lr"],
        batch_size=r["batch_size"],
        weight_decay=r["weight_decay"],
        seed=r["seed"] + 100,
        optimizer=r["optimizer"],
    )
    return time.perf_counter() - t0, time.process_time() - c0


def run_daunce(
    gt: dict,
    *,
    K: int,
    ratio: float,
    objective: str,
    rho: float | None,
    gamma: float,
    optimizer: str,
    lr: float,
    epochs: float,
    batch_size: int,
    seed: int,
    score_methods: list[str],
    extra: dict | None = None,
) -> dict:
    """One DAUNCE fit through the library's pipeline, scored with each of ``score_methods``.
    ``extra``: further Daunce keywords (e.g. schedule, antithetic, weight_decay, steps).

    Returns {"fit_s", "fit_cpu_s", "record_s", "record_cpu_s" (recording the test losses): seconds,
    method: (scores [N_train, N_test], wall and CPU seconds of that method's scores() call)}.
    A row's wall_s = fit + record + its scores() call (training and test losses recorded once).
    """
    from daunce_fast import Daunce

    task = load_task(gt)
    train = TensorDataset(task.x_train, task.y_train)
    test = TensorDataset(task.x_test, task.y_test)
    model = copy.deepcopy(model_from_state(gt))
    out = {}
    with tempfile.TemporaryDirectory(prefix="daunce_lds_") as workdir:
        t0, c0 = time.perf_counter(), time.process_time()
        d = Daunce(
            model,
            num_models=K,
            ratio=ratio,
            objective=objective,
            rho=rho,
            gamma=gamma,
            rank="full",
            optimizer=optimizer,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            workdir=workdir,
            **(extra or {}),
        )
        out["rho"] = d.config.rho
        d.fit(train)
        out["fit_s"], out["fit_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        # the first scores() call also records the test set's [K, M] losses (once): time it, then
        # time every method on its own; record = first call - the same method's own time
        t1, c1 = time.perf_counter(), time.process_time()
        d.scores(train, test, method=score_methods[0])
        first, first_cpu = time.perf_counter() - t1, time.process_time() - c1
        for m in score_methods:
            t1, c1 = time.perf_counter(), time.process_time()
            s = d.scores(train, test, method=m)
            out[m] = (s, time.perf_counter() - t1, time.process_time() - c1)
        out["record_s"] = max(0.0, first - out[score_methods[0]][1])
        out["record_cpu_s"] = max(0.0, first_cpu - out[score_methods[0]][2])
    return out


def bench_dataset(name: str, a) -> list[dict]:
    gt = torch.load(a.ground_truth, weights_only=False) if a.ground_truth else load_or_build(name)
    r = gt["recipe"]
    print(
        f"\n== {name}: N_train={gt['subsets'].shape[1]} N_test={gt['targets'].shape[1]} "
        f"subsets={gt['subsets'].shape[0]} recipe=mlp{r['hidden']}x{r['depth']} {r['optimizer']} "
        f"lr={r['lr']} epochs={r['epochs']}",
        flush=True,
    )
    rows = []
    methods = _strs(a.methods)
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if "graddot" in methods:
        c0 = time.process_time()
        s, t = grad_dot(gt)
        rows.append(_row(name, "graddot", "", _lds(gt, s), t, cpu_s=time.process_time() - c0))
        print(rows[-1], flush=True)
    extra_per_ckpt, extra_cpu_per_ckpt = plain_train_seconds(gt) if "trak5" in methods else (0.0, 0.0)
    for nc, key in ((1, "trak1"), (5, "trak5")):
        if key not in methods:
            continue
        for reg in _floats(a.trak_reg):
            c0 = time.process_time()
            s, t = trak(gt, num_ckpts=nc, regularization=reg, proj_dim=a.trak_proj_dim)
            rows.append(
                _row(
                    name,
                    key,
                    f"reg={reg:g} proj={a.trak_proj_dim}",
                    _lds(gt, s),
                    t,
                    cpu_s=time.process_time() - c0,
                    extra=(nc - 1) * extra_per_ckpt,
                    extra_cpu_s=(nc - 1) * extra_cpu_per_ckpt,
                )
            )
            print(rows[-1], flush=True)
    if "if" in methods:
        ex = ExactIF(gt, cache=CACHE / f"hessian_{name}.pt")
        for d in _floats(a.if_damping):
            s, t = ex.scores(d)
            rows.append(_row(name, "if", f"damping={d:g} (exact H, eigh)", _lds(gt, s), t, cpu_s=ex.last_cpu_s))
            print(rows[-1], flush=True)
    if "if-dattri" in methods:
        for d in _floats(a.if_dattri_damping):
            c0 = time.process_time()
            s, t = if_dattri(gt, regularization=d)
            rows.append(_row(name, "if-dattri", f"reg={d:g}", _lds(gt, s), t, cpu_s=time.process_time() - c0))
            print(rows[-1], flush=True)
    if "daunce" in methods:
        extra = dict(_kv(v) for v in a.daunce_opt)
        rhos = [None if v == "default" else float(v) for v in _strs(a.rho)]
        grid = itertools.product(
            _ints(a.K),
            _strs(a.objective),
            _strs(a.perturbation),
            rhos,
            _floats(a.epochs),
            _floats(a.lr),
            _strs(a.optimizer),
            _floats(a.ratio),
            _floats(a.gamma),
        )
        for K, obj, pert, rho, ep, lr, opt, ratio, gamma in grid:
            res = run_daunce(
                gt,
                K=K,
                ratio=ratio,
                objective=obj,
                rho=rho,
                gamma=gamma,
                optimizer=opt,
                lr=lr,
                epochs=ep,
                batch_size=a.batch_size,
                seed=a.seed,
                score_methods=_strs(a.score_method),
                extra={"perturbation": pert, **extra},
            )
            rho = res["rho"]
            for sm in _strs(a.score_method):
                s, ts, cs = res[sm]
                params = (
                    f"K={K} obj={obj} {pert} rho={rho:g} gamma={gamma:g} epochs={ep:g} lr={lr:g} opt={opt} "
                    f"ratio={ratio:g} bs={a.batch_size} score={sm}" + "".join(f" {k}={v}" for k, v in extra.items())
                )
                rows.append(
                    _row(
                        name,
                        "daunce",
                        params,
                        _lds(gt, s),
                        res["fit_s"] + res["record_s"] + ts,
                        cpu_s=res["fit_cpu_s"] + res["record_cpu_s"] + cs,
                        fit_s=res["fit_s"],
                        record_s=res["record_s"],
                        score_s=ts,
                    )
                )
                print(rows[-1], flush=True)
    return rows


def _quiet_tqdm():
    """dattri draws a progress bar per batch; silence them (tqdm 4.66's TQDM_DISABLE is not here)."""
    import functools

    import tqdm
    import tqdm.auto

    quiet = type("quiet_tqdm", (tqdm.tqdm,), {"__init__": functools.partialmethod(tqdm.tqdm.__init__, disable=True)})
    tqdm.tqdm = tqdm.auto.tqdm = quiet


def main(argv=None):
    ap = argparse.ArgumentParser(description="LDS of attribution methods on bundled tabular tasks")
    ap.add_argument(
        "--dataset",
        action="append",
        choices=["digits", "breast_cancer", "wine"],
        help="repeatable; default digits and breast_cancer",
    )
    ap.add_argument("--methods", default="graddot,trak1,trak5,if", help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 cores shared by several sessions)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/out/results.jsonl")
    ap.add_argument(
        "--ground-truth",
        metavar="PATH",
        help="a ground-truth file (torch.save of a groundtruth.build dict) instead of "
        "bench/out/lds_<dataset>.pt; give one --dataset, the name it was built for",
    )
    g = ap.add_argument_group("baselines")
    g.add_argument("--trak-reg", default="0,1e-2,1e-1,1,10,100", help="TRAK regularization grid")
    g.add_argument("--trak-proj-dim", type=int, default=512)
    g.add_argument("--if-damping", default="1e-4,1e-3,1e-2,1e-1,1", help="exact IF damping grid")
    g.add_argument("--if-dattri-damping", default="1e-2", help="dattri IFAttributorExplicit grid (small P only)")
    g = ap.add_argument_group("daunce (each combination is one fit; score methods share it)")
    g.add_argument("--K", default="256", help="number of perturbed models, comma list (64..2048)")
    g.add_argument("--objective", default="if", help="if,efim")
    g.add_argument("--score-method", default="covariance", help="covariance,pearson")
    g.add_argument("--rho", default="default", help="comma list; 'default': the library's for the perturbation")
    g.add_argument("--gamma", default="1")
    g.add_argument("--epochs", default="10", help="training epochs of each perturbed model, comma list")
    g.add_argument("--lr", default="1e-3")
    g.add_argument("--optimizer", default="adam", help="adam,sgd")
    g.add_argument("--ratio", default="0.5", help="subset ratio r")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--perturbation", default="hessian", help="hessian,xi")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--daunce-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other Daunce keyword, repeatable (e.g. schedule=constant, antithetic=true)",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    _quiet_tqdm()
    rows = []
    for name in a.dataset or ["digits", "breast_cancer"]:
        rows += bench_dataset(name, a)
    print()
    print_table(
        rows,
        [
            "dataset",
            "method",
            "params",
            "lds",
            "lds_all",
            "nan_tests",
            "nonfinite_scores",
            "wall_s",
            "cpu_s",
            "extra_s",
            "extra_cpu_s",
        ],
    )
    if not a.no_record:
        print(f"recorded in {record('lds', rows)}")
    return rows


if __name__ == "__main__":
    main()
