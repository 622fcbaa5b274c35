"""LDS of a small CNN with BatchNorm on digits as 1x8x8 images (issue 15, item 6): DAUNCE through the
public API beside dattri's TRAK (1 and 5 checkpoints) and Grad-Dot, with wall times.

    PYTHONPATH=$PWD python bench/quality/lds_cnn.py data                  # build / load the ground truth
    PYTHONPATH=$PWD python bench/quality/lds_cnn.py baselines [--trak-reg 0.01,0.1,1,10,100]
    PYTHONPATH=$PWD python bench/quality/lds_cnn.py daunce --K 256,512 --targets default,head,convs_head
        [--rho 0.03] [--daunce-opt KEY=VALUE ...]

Ground truth (daunce_fast.evaluation.groundtruth_cnn.build): θ0 and 4 more full-data CNNs (seeds
0-4, TRAK-5's checkpoints) and 100 CNNs retrained on random 50% subsets (one run each, seeds
10000+s), same recipe for all (CNNRecipe: Adam lr 2e-3, weight decay 1e-4, batch 64, 20 epochs,
BatchNorm momentum 0.1), cached in bench/out/lds_cnn_<key>.pt, key = hash of the recipe, the
number of subsets, the subset seed and the number of extra checkpoints.

Test halves: a fixed random split of the 360 test examples (torch.randperm(M) with seed 0): "tune"
(first half) chooses every hyper-parameter (TRAK's damping, DAUNCE's settings), "report" (second
half) is held out; LDS per test example is dattri's (Spearman across subsets of the summed scores
vs the negative test loss of the retrained models; daunce_fast.evaluation.metrics.lds), averaged
over each half and over all (non-finite scores set to 0, as bench/quality/lds.py).

Every row is printed and appended to bench/out/results.jsonl (bench/harness.record, study
"lds_cnn"); wall_s is the attribution (θ0 given), extra_s what it needs on top (TRAK-5: plain
training of its 4 extra checkpoints, measured once here).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
for p in (HERE.parent, HERE.parents[1]):  # bench/ (the harness), the repo root
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from harness import OUT, print_table, record  # noqa: E402

from daunce_fast.evaluation import groundtruth_cnn as gc  # noqa: E402
from daunce_fast.evaluation.baselines import grad_dot, trak  # noqa: E402  (they take the CNN ground truth too)
from daunce_fast.evaluation.metrics import lds  # noqa: E402

RECIPE = gc.CNNRecipe()
NUM_SUBSETS = 100
SUBSET_SEED = 1234
EXTRA_CKPTS = 4
HEAD = "8"  # name of the final nn.Linear in gc.cnn's nn.Sequential


def cache_path(recipe=RECIPE, num_subsets=NUM_SUBSETS, subset_seed=SUBSET_SEED, extra=EXTRA_CKPTS) -> Path:
    r = asdict(recipe)
    r["channels"] = list(r["channels"])
    key = json.dumps({"recipe": r, "subsets": num_subsets, "subset_seed": subset_seed, "extra": extra}, sort_keys=True)
    return OUT / f"lds_cnn_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def load_or_build(rebuild: bool = False) -> dict:
    p = cache_path()
    if p.exists() and not rebuild:
        return torch.load(p, weights_only=False)
    gt = gc.build(RECIPE, NUM_SUBSETS, EXTRA_CKPTS, SUBSET_SEED, log=lambda s: print(s, flush=True))
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(gt, p)
    print(f"saved {p}", flush=True)
    return gt


def halves(m: int) -> dict[str, np.ndarray]:
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(0)).numpy()
    return {"tune": perm[: m // 2], "report": perm[m // 2 :], "all": np.arange(m)}


def lds_halves(gt: dict, scores) -> dict:
    """LDS averaged over each test half and all (NaN per-example LDS ignored; count reported)."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(s)
    s = np.where(bad, 0.0, s)
    per, _ = lds(s, gt["subsets"], gt["targets"])
    out = {f"lds_{k}": float(np.nanmean(per[idx])) for k, idx in halves(len(per)).items()}
    out["nan_tests"] = int(np.isnan(per).sum())
    out["nonfinite_scores"] = int(bad.sum())
    return out


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def plain_train_seconds(gt) -> float:
    """Seconds of one plain training on the full training set with the recipe (a TRAK checkpoint's cost)."""
    r = gt["recipe"]
    task = gc.load_task(gt)
    t0 = time.perf_counter()
    gc.train_plain(
        gc._model(r, 10, 100),
        task.x_train,
        task.y_train,
        epochs=r["epochs"],
        lr=r["lr"],
        batch_size=r["batch_size"],
        weight_decay=r["weight_decay"],
        seed=100,
        optimizer=r["optimizer"],
    )
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# DAUNCE through the public API
# ----------------------------------------------------------------------------------------------
def target_sets(model) -> dict:
    """Named target_modules choices: None (the library's default: the head since 86af5e1, before it
    convolutions + BatchNorm affine + head), the head only, convolutions + head, and "all"
    (convolutions + BatchNorm affine + head, the earlier default)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return {
        "default": None,
        "head": [HEAD],
        "convs_head": [*convs, HEAD],
        "all": sorted([*convs, *norms, HEAD], key=int),
    }


def run_daunce(gt, *, K: int, targets, seed: int = 0, extra: dict | None = None, limit: int | None = None) -> dict:
    """One Daunce fit on θ0 (covariance scores). Returns {"scores", "fit_s", "scores_s", "summary"}."""
    from daunce_fast import Daunce

    task = gc.load_task(gt)
    train = TensorDataset(task.x_train[:limit], task.y_train[:limit])
    test = TensorDataset(task.x_test[:limit], task.y_test[:limit])
    model = copy.deepcopy(gc.model_from_state(gt))
    kw = dict(num_models=K, seed=seed, **(extra or {}))
    if targets is not None:
        kw["target_modules"] = targets
    with tempfile.TemporaryDirectory(prefix="daunce_lds_cnn_") as wd:
        t0 = time.perf_counter()
        d = Daunce(model, workdir=wd, **kw)
        summary = None
        if hasattr(d, "summary"):
            try:
                summary = str(d.summary())
            except Exception as e:  # a summary is informative only
                summary = f"summary() failed: {e!r}"
        d.fit(train)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        s = d.scores(train, test)
        scores_s = time.perf_counter() - t1
        d.close()
    return {"scores": s, "fit_s": fit_s, "scores_s": scores_s, "summary": summary}


def _kv(s: str):
    k, _, v = s.partition("=")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def main(argv=None):
    ap = argparse.ArgumentParser(description="LDS of a CNN with BatchNorm on digits 1x8x8")
    ap.add_argument("step", choices=["data", "baselines", "daunce"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the ground truth even if cached")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--trak-reg", default="0.01,0.1,1,10,100", help="TRAK damping grid (chosen on the tune half)")
    ap.add_argument("--trak-proj-dim", type=int, default=512)
    ap.add_argument("--K", default="256,512")
    ap.add_argument("--targets", default="default,head", help="comma list of default, head, convs_head, all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--daunce-opt", action="append", default=[], metavar="KEY=VALUE", help="other Daunce keywords")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"load average at start: {_loadavg()}", flush=True)
    gt = load_or_build(a.rebuild)
    i = gt["info"]
    print(
        f"ground truth {cache_path().name}: N={i['n_train']} M={i['n_test']} recipe={gt['recipe']}\n"
        f"  full models {i['full_models_s']:.1f}s, test acc {[f'{v:.4f}' for v in i['full_test_acc']]}; "
        f"{gt['subsets'].shape[0]} subset models {i['subset_models_s']:.1f}s, "
        f"mean test acc {i['subset_test_acc_mean']:.4f}",
        flush=True,
    )
    rows = []

    def add(method, params, scores, wall, **more):
        row = {"method": method, "params": params, **lds_halves(gt, scores), "wall_s": wall, **more}
        row["load"] = _loadavg()
        rows.append(row)
        print(row, flush=True)

    if a.step == "baselines":
        _quiet_tqdm()
        s, t = grad_dot(gt)
        add("graddot", "", s, t)
        extra = plain_train_seconds(gt)
        print(f"plain training of one full-data checkpoint: {extra:.1f}s", flush=True)
        for nc in (1, 5):
            for reg in [float(v) for v in a.trak_reg.split(",")]:
                s, t = trak(gt, num_ckpts=nc, regularization=reg, proj_dim=a.trak_proj_dim)
                add(f"trak{nc}", f"reg={reg:g} proj={a.trak_proj_dim}", s, t, extra_s=(nc - 1) * extra)
    elif a.step == "daunce":
        extra = dict(_kv(v) for v in a.daunce_opt)
        sets = target_sets(gc.model_from_state(gt))
        # one-off start-up cost (imports, first kernels) outside the timed runs: a K = 2 fit on 64 examples
        t0 = time.perf_counter()
        small = {"subsets": gt["subsets"], "recipe": gt["recipe"], "theta0": gt["theta0"]}
        warm = run_daunce(small, K=2, targets=None, extra={"epochs": 1, **extra}, limit=64)
        print(f"warm-up fit (K=2, 64 examples, not in the table): {time.perf_counter() - t0:.1f}s", flush=True)
        if warm["summary"]:
            print(warm["summary"], flush=True)
        for K in [int(v) for v in a.K.split(",")]:
            for name in a.targets.split(","):
                res = run_daunce(gt, K=K, targets=sets[name], seed=a.seed, extra=extra)
                if res["summary"]:
                    print(res["summary"], flush=True)
                params = f"K={K} targets={name} seed={a.seed}" + "".join(f" {k}={v}" for k, v in extra.items())
                add(
                    "daunce",
                    params,
                    res["scores"],
                    res["fit_s"] + res["scores_s"],
                    fit_s=res["fit_s"],
                    scores_s=res["scores_s"],
                )
    if rows:
        print()
        cols = ["method", "params", "lds_tune", "lds_report", "lds_all", "nan_tests", "wall_s", "extra_s", "load"]
        print_table(rows, cols)
        if not a.no_record:
            print(f"recorded in {record('lds_cnn', rows)}")
    return rows


def _quiet_tqdm():
    """dattri draws a progress bar per batch; silence them."""
    import functools

    import tqdm
    import tqdm.auto

    quiet = type("quiet_tqdm", (tqdm.tqdm,), {"__init__": functools.partialmethod(tqdm.tqdm.__init__, disable=True)})
    tqdm.tqdm = tqdm.auto.tqdm = quiet


if __name__ == "__main__":
    main()
