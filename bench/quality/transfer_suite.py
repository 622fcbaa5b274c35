"""Transfer suite (issue 16), tabular part: ground truths, DAUNCE grids and the calibration candidate.

The tasks and the two halves are fixed in daunce_fast/evaluation/transfer.py (checkerboard over
data set x θ0 recipe; design = (i + j) even). Every subcommand runs in parts (--tasks / --half)
and appends one JSON line per result to bench/out/transfer/<subcommand>.jsonl, so a later session
resumes where this one stopped (done cells are skipped unless --redo).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/quality/transfer_suite.py build [--half design]
    ... transfer_suite.py grid  --half design [--lr 3e-4,1e-3,3e-3,1e-2] [--epochs 5,10,20] [--K 512]
    ... transfer_suite.py sharp --half all         # λ_max of θ0's Hessian (daunce_fast.daunce.sharpness)
    ... transfer_suite.py fit-rule                 # c of lr = c / λ_max from the DESIGN half's grid optima
    ... transfer_suite.py calibrated --half heldout # DAUNCE with the fitted rule's lr
    ... transfer_suite.py auto --half all [--auto-epochs 10] # the library's calibrated defaults (lr="auto")
    ... transfer_suite.py trak --half design       # TRAK-5, damping grid
    ... transfer_suite.py table                    # markdown tables of everything recorded

Ground truths: bench/out/transfer/gt_<task>_<key>.pt (key: hash of recipe, seeds, subset settings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daunce_fast.evaluation import transfer  # noqa: E402
from daunce_fast.evaluation.baselines import load_task, model_from_state  # noqa: E402  (MLP or CNN ground truths)
from daunce_fast.evaluation.groundtruth import build  # noqa: E402
from daunce_fast.evaluation.metrics import lds  # noqa: E402

OUT = Path(os.environ.get("DAUNCE_FAST_BENCH_OUT", ROOT / "bench" / "out")) / "transfer"

# the library's current classifier defaults (daunce_fast/daunce/config.py) for the "defaults" column
DEFAULT_LR, DEFAULT_EPOCHS = 1e-3, 10


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def _select(a) -> list:
    ts = transfer.tasks("every" if a.tasks else a.half)  # named tasks: from any half
    if a.tasks:
        want = set(a.tasks.split(","))
        ts = [t for t in ts if t.name in want]
    return ts


def _load_rows(kind: str) -> list[dict]:
    p = OUT / f"{kind}.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _append(kind: str, row: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{kind}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def ground_truth(task, *, build_missing: bool = True) -> dict:
    p = task.cache_path(OUT)
    if p.exists():
        return torch.load(p, weights_only=False)
    if not build_missing:
        raise FileNotFoundError(f"{p}: run `transfer_suite.py build --tasks {task.name}` first")
    t0 = time.perf_counter()
    if task.dataset == "cnn":
        from daunce_fast.evaluation import groundtruth_cnn

        gt = groundtruth_cnn.build(
            task.recipe,
            num_subsets=transfer.NUM_SUBSETS,
            extra_ckpts=transfer.EXTRA_CKPTS,
            subset_seed=transfer.SUBSET_SEED,
            log=lambda m: print(m, flush=True),
        )
    else:
        gt = build(
            task.recipe,
            num_subsets=transfer.NUM_SUBSETS,
            extra_ckpts=transfer.EXTRA_CKPTS,
            subset_seed=transfer.SUBSET_SEED,
        )
    gt["info"]["build_s"] = time.perf_counter() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(gt, p)
    return gt


def cmd_build(a) -> None:
    done = {r["task"] for r in _load_rows("build")}
    for t in _select(a):
        if t.name in done and t.cache_path(OUT).exists() and not a.redo:
            continue
        gt = ground_truth(t)
        i = gt["info"]
        _append(
            "build",
            {
                "task": t.name,
                "half": t.half,
                "key": t.key(),
                "recipe": gt["recipe"],
                "theta0_test_acc": i["full_test_acc"][0],
                "subset_test_acc_mean": i["subset_test_acc_mean"],
                "build_s": round(i.get("build_s", i["full_models_s"] + i["subset_models_s"]), 1),
                "target_std_median": float(gt["targets"].std(0).median()),
                "load": _load_avg(),
            },
        )


def _lds_of(gt, scores) -> float:
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64))
    _, mean = lds(torch.as_tensor(s), gt["subsets"], gt["targets"])
    return float(mean)


def run_daunce(gt, *, K: int, lr, epochs, rho: float | None = None, seed: int = 0, info: dict | None = None):
    """(LDS, fit seconds) of one DAUNCE fit at the library's defaults except lr / epochs / rho
    ("auto" or None: the library's calibration). ``info``, when given, receives the calibration's
    values and the first chunk's diagnostics (calibration.json)."""
    from daunce_fast import Daunce

    task = load_task(gt)
    train = TensorDataset(task.x_train, task.y_train)
    test = TensorDataset(task.x_test, task.y_test)
    model = model_from_state(gt)
    kw = {} if rho is None else {"rho": rho}
    if lr is not None:
        kw["lr"] = lr
    if epochs is not None:
        kw["epochs"] = epochs
    with tempfile.TemporaryDirectory(prefix="daunce_transfer_") as wd:
        t0 = time.perf_counter()
        d = Daunce(model, num_models=K, seed=seed, workdir=wd, **kw)
        d.fit(train)
        fit_s = time.perf_counter() - t0
        if info is not None:
            p = Path(wd) / "calibration.json"
            info.update(json.loads(p.read_text()) if p.exists() else {})
        try:
            s = d.scores(train, test)
            val = _lds_of(gt, s)
        except Exception as e:  # a diverged fit: report it as LDS 0 with the error
            print(f"  scores failed: {e!r}"[:200], flush=True)
            val = float("nan")
    return val, fit_s


def cmd_grid(a) -> None:
    done = {(r["task"], r["K"], r["lr"], r["epochs"], r.get("rho"), r.get("seed", 0)) for r in _load_rows("grid")}
    rhos = [None] if not a.rho else [None if v == "default" else float(v) for v in a.rho.split(",")]
    for t in _select(a):
        gt = ground_truth(t, build_missing=False)
        for ep in _floats(a.epochs):
            for lr in _floats(a.lr):
                for rho in rhos:
                    if (t.name, a.K, lr, ep, rho, a.seed) in done and not a.redo:
                        continue
                    val, fit_s = run_daunce(gt, K=a.K, lr=lr, epochs=ep, rho=rho, seed=a.seed)
                    _append(
                        "grid",
                        {
                            "task": t.name,
                            "half": t.half,
                            "K": a.K,
                            "lr": lr,
                            "epochs": ep,
                            "rho": rho,
                            "seed": a.seed,
                            "lds": val,
                            "fit_s": round(fit_s, 1),
                            "load": _load_avg(),
                        },
                    )


def cmd_sharp(a) -> None:
    from daunce_fast.daunce.sharpness import adam_preconditioner, sharpness

    done = {r["task"] for r in _load_rows("sharp")}
    for t in _select(a):
        if t.name in done and not a.redo:
            continue
        gt = ground_truth(t, build_missing=False)
        task = load_task(gt)
        model = model_from_state(gt)
        res = sharpness(model, task.x_train, task.y_train, subsample=a.subsample, iters=a.iters, seed=0)
        # Adam-preconditioned sharpness (the copies train with Adam, batch 128)
        t1 = time.perf_counter()
        pre = adam_preconditioner(model, task.x_train, task.y_train, subsample=a.subsample, seed=0)
        res_a = sharpness(model, task.x_train, task.y_train, subsample=a.subsample, iters=a.iters, seed=0, precond=pre)
        adam_s = time.perf_counter() - t1
        _append(
            "sharp",
            {
                "task": t.name,
                "half": t.half,
                "lambda_max": res.value,
                "iters": res.iters,
                "rel_change": res.rel_change,
                "subsample": res.subsample,
                "wall_s": round(res.wall_s, 3),
                "lambda_adam": res_a.value,
                "iters_adam": res_a.iters,
                "wall_adam_s": round(adam_s, 3),
                "load": _load_avg(),
            },
        )


def _best_cells(rows: list[dict], K: int) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in rows:
        if r["K"] != K or r.get("rho") is not None or r.get("seed", 0) != 0 or not math.isfinite(r["lds"]):
            continue
        if r["task"] not in best or r["lds"] > best[r["task"]]["lds"]:
            best[r["task"]] = r
    return best


def fit_rule(K: int = 512) -> dict:
    """lr = c / λ, from the DESIGN half only: for each measure λ (the Hessian's λ_max, or Adam's
    preconditioned one), c = geometric mean over the design tasks of (grid-best lr) x λ; the measure
    kept is the one whose log(lr* λ) varies least across the design tasks. epochs = the most frequent
    grid-best epochs on the design half (ties: the smaller)."""
    grid = [r for r in _load_rows("grid") if r["half"] == "design"]
    sharp = {r["task"]: r for r in _load_rows("sharp")}
    best = _best_cells(grid, K)
    used = [(t, b) for t, b in sorted(best.items()) if t in sharp]
    if not used:
        raise SystemExit("no design-half grid rows with a sharpness: run grid and sharp on --half design")
    fits = {}
    for measure in ("lambda_max", "lambda_adam"):
        logs = [math.log(b["lr"] * sharp[t][measure]) for t, b in used if sharp[t].get(measure, 0) > 0]
        fits[measure] = {"c": math.exp(sum(logs) / len(logs)), "log_c_sd": float(np.std(logs)), "n": len(logs)}
    measure = min(fits, key=lambda m: fits[m]["log_c_sd"])
    counts: dict[float, int] = {}
    for _, b in used:
        counts[b["epochs"]] = counts.get(b["epochs"], 0) + 1
    epochs = min(counts, key=lambda e: (-counts[e], e))
    lrs = sorted(b["lr"] for _, b in used)
    return {
        # the baseline rule with no measurement: the design half's median grid-best lr, same epochs
        "constant": {"lr": lrs[(len(lrs) - 1) // 2], "epochs": epochs},
        "measure": measure,
        "c": fits[measure]["c"],
        "fits": fits,
        "epochs": epochs,
        "tasks": [t for t, _ in used],
        "grid_best": {t: [b["lr"], b["epochs"], b["lds"]] for t, b in used},
        "K": K,
    }


def cmd_fit_rule(a) -> None:
    rule = fit_rule(a.K)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rule.json").write_text(json.dumps(rule, indent=1))
    print(json.dumps(rule))


def cmd_calibrated(a) -> None:
    from daunce_fast.daunce.sharpness import lr_from_sharpness

    rule = json.loads((OUT / "rule.json").read_text())
    sharp = {r["task"]: r for r in _load_rows("sharp")}
    done = {(r["task"], r["K"], r["c"]) for r in _load_rows("calibrated")}
    for t in _select(a):
        if (t.name, a.K, rule["c"]) in done and not a.redo:
            continue
        if t.name not in sharp:
            raise SystemExit(f"no sharpness for {t.name}: run `sharp --tasks {t.name}` first")
        gt = ground_truth(t, build_missing=False)
        lr = lr_from_sharpness(sharp[t.name][rule["measure"]], c=rule["c"])
        val, fit_s = run_daunce(gt, K=a.K, lr=lr, epochs=rule["epochs"])
        _append(
            "calibrated",
            {
                "task": t.name,
                "half": t.half,
                "K": a.K,
                "c": rule["c"],
                "lr": lr,
                "epochs": rule["epochs"],
                "lds": val,
                "fit_s": round(fit_s, 1),
                "measure": rule["measure"],
                "sharp_s": sharp[t.name]["wall_s"] + sharp[t.name]["wall_adam_s"],
                "load": _load_avg(),
            },
        )


def cmd_auto(a) -> None:
    """DAUNCE with the library's calibrated defaults (lr="auto"; epochs "auto" or --epochs)."""
    epochs = None if a.auto_epochs == "auto" else float(a.auto_epochs)
    done = {(r["task"], r["K"], r["epochs_arg"], r["seed"]) for r in _load_rows("auto")}
    for t in _select(a):
        if (t.name, a.K, a.auto_epochs, a.seed) in done and not a.redo:
            continue
        gt = ground_truth(t, build_missing=False)
        info: dict = {}
        val, fit_s = run_daunce(gt, K=a.K, lr=None, epochs=epochs, seed=a.seed, info=info)
        diag = info.get("diagnostics", {})
        _append(
            "auto",
            {
                "task": t.name,
                "half": t.half,
                "K": a.K,
                "epochs_arg": a.auto_epochs,
                "seed": a.seed,
                "lr": info.get("lr"),
                "epochs": info.get("epochs"),
                "steps": info.get("steps"),
                "theta0_loss": info.get("theta0_loss"),
                "spread": diag.get("spread"),
                "warnings": diag.get("warnings"),
                "lds": val,
                "fit_s": round(fit_s, 1),
                "load": _load_avg(),
            },
        )


def cmd_trak(a) -> None:
    from daunce_fast.evaluation.baselines import trak

    done = {(r["task"], r["reg"]) for r in _load_rows("trak")}
    for t in _select(a):
        gt = ground_truth(t, build_missing=False)
        for reg in _floats(a.reg):
            if (t.name, reg) in done and not a.redo:
                continue
            s, wall = trak(gt, num_ckpts=5, regularization=reg)
            _append(
                "trak",
                {
                    "task": t.name,
                    "half": t.half,
                    "reg": reg,
                    "lds": _lds_of(gt, s),
                    "wall_s": round(wall, 1),
                    "load": _load_avg(),
                },
            )


def _fmt(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _mean(v: list[float]) -> float:
    return float(np.mean(v))


def _auto_table(K: int) -> None:
    """The library's calibrated defaults (lr="auto", 10 epochs) per task against the grid's best cell
    (LDS averaged over the DAUNCE seeds each cell has), the previous defaults (lr 1e-3, 10 epochs) and
    TRAK-5 with its best damping; then the counts per half."""
    from daunce_fast.daunce.calibration import AUTO_EPOCHS

    cells: dict[tuple, list[float]] = {}
    for r in _load_rows("grid"):
        if r["K"] == K and r.get("rho") is None:
            cells.setdefault((r["task"], r["lr"], r["epochs"]), []).append(r["lds"])
    auto: dict[str, list[dict]] = {}
    for r in _load_rows("auto"):
        if r["K"] == K and r["epochs"] == AUTO_EPOCHS and r["epochs_arg"] in ("auto", str(AUTO_EPOCHS)):
            auto.setdefault(r["task"], {})[r["seed"]] = r
    trak_best: dict[str, float] = {}
    for r in _load_rows("trak"):
        trak_best[r["task"]] = max(trak_best.get(r["task"], -1.0), r["lds"])
    print(f"\nCalibrated defaults (lr='auto', {AUTO_EPOCHS} epochs) vs the grid's best, K = {K}\n")
    print(
        "| task | half | θ0 train loss | auto lr | steps | auto LDS (seeds) | grid best (lr, epochs) | best LDS "
        "| auto / best | ≥ 0.97 | old defaults LDS | old / best | TRAK-5 | auto ≥ TRAK-5 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    counts: dict[str, list[int]] = {}
    for t in transfer.tasks("every"):
        runs = list(auto.get(t.name, {}).values())
        mine = {k: _mean(v) for k, v in cells.items() if k[0] == t.name}
        if not runs or not mine:
            continue
        best = max(mine, key=mine.get)
        a_lds = _mean([r["lds"] for r in runs])
        old = mine.get((t.name, DEFAULT_LR, float(DEFAULT_EPOCHS)))
        tb = trak_best.get(t.name)
        ok = a_lds >= 0.97 * mine[best]
        c = counts.setdefault(t.half, [0, 0, 0, 0, 0])
        c[0] += 1
        c[1] += ok
        c[2] += old is not None and old >= 0.97 * mine[best]
        c[3] += tb is not None and a_lds >= tb
        c[4] += tb is not None
        print(
            f"| {t.name} | {t.half} | {runs[0]['theta0_loss']:.2g} | {runs[0]['lr']:.3g} | {runs[0]['steps']} | "
            f"{a_lds:.3f} ({len(runs)}) | {best[1]:g}, {best[2]:g} | {mine[best]:.3f} ({len(cells[best])}) | "
            f"{a_lds / mine[best]:.3f} | {'met' if ok else 'not met'} | {_fmt(old)} | "
            f"{_fmt(old / mine[best] if old is not None else None)} | {_fmt(tb)} | {'yes' if tb is not None and a_lds >= tb else 'no'} |"
        )
    print("\n| half | tasks | auto ≥ 0.97 x best | old defaults ≥ 0.97 x best | auto ≥ TRAK-5 |")
    print("|---|---|---|---|---|")
    for h, (n, ok, old_ok, tr, trn) in counts.items():
        print(f"| {h} | {n} | {ok} | {old_ok} | {tr} of {trn} |")


def cmd_table(a) -> None:
    builds = {r["task"]: r for r in _load_rows("build")}
    print("| task | half | optimizer | lr | epochs | wd | θ0 test acc | GT build s | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in transfer.tasks("every"):
        b = builds.get(t.name)
        r = t.recipe
        print(
            f"| {t.name} | {t.half} | {r.optimizer} | {r.lr:g} | {r.epochs} | {r.weight_decay:g} | "
            f"{_fmt(b and b['theta0_test_acc'])} | {_fmt(b and b['build_s'], 1)} | {_fmt(b and b['load'], 2)} |"
        )
    grid = _load_rows("grid")
    sharp = {r["task"]: r for r in _load_rows("sharp")}
    trak_best: dict[str, dict] = {}
    for r in _load_rows("trak"):
        if r["task"] not in trak_best or r["lds"] > trak_best[r["task"]]["lds"]:
            trak_best[r["task"]] = r
    cal = {r["task"]: r for r in _load_rows("calibrated") if r["K"] == a.K}
    rule_p = OUT / "rule.json"
    const = json.loads(rule_p.read_text()).get("constant") if rule_p.exists() else None
    for h in ("design", "heldout", "fresh"):
        rows = [r for r in grid if r["half"] == h and r["K"] == a.K and r.get("rho") is None and r.get("seed", 0) == 0]
        if not rows:
            continue
        lrs = sorted({r["lr"] for r in rows})
        eps = sorted({r["epochs"] for r in rows})
        print(f"\n{h} half, K = {a.K}: LDS per copies' (epochs, lr)\n")
        print("| task | epochs | " + " | ".join(f"lr {v:g}" for v in lrs) + " |")
        print("|---|---|" + "---|" * len(lrs))
        cell = {(r["task"], r["epochs"], r["lr"]): r["lds"] for r in rows}
        for t in transfer.tasks(h):
            for e in eps:
                vals = [cell.get((t.name, e, v)) for v in lrs]
                if all(v is None for v in vals):
                    continue
                print(f"| {t.name} | {e:g} | " + " | ".join(_fmt(v) for v in vals) + " |")
        best = _best_cells(rows, a.K)
        print(f"\n{h} half summary\n")
        print(
            "| task | λ_max | grid best (lr, epochs) | grid best LDS | defaults LDS | defaults / best "
            "| calibrated lr | calibrated LDS | calibrated / best | ≥ 0.97? | constant-rule LDS | constant / best "
            "| TRAK-5 (reg) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in transfer.tasks(h):
            b = best.get(t.name)
            if b is None:
                continue
            dflt = cell.get((t.name, DEFAULT_EPOCHS, DEFAULT_LR))
            c = cal.get(t.name)
            tb = trak_best.get(t.name)
            ratio_c = c["lds"] / b["lds"] if c else None
            treg = f" ({tb['reg']:g})" if tb else ""
            cst = cell.get((t.name, const["epochs"], const["lr"])) if const else None
            print(
                f"| {t.name} | {_fmt(sharp.get(t.name, {}).get('lambda_max'), 2)} | "
                f"{b['lr']:g}, {b['epochs']:g} | {b['lds']:.3f} | {_fmt(dflt)} | "
                f"{_fmt(dflt / b['lds'] if dflt is not None else None)} | "
                f"{_fmt(c['lr'], 5) if c else ''} | {_fmt(c and c['lds'])} | {_fmt(ratio_c)} | "
                f"{'' if ratio_c is None else ('met' if ratio_c >= 0.97 else 'not met')} | "
                f"{_fmt(cst)} | {_fmt(cst / b['lds'] if cst is not None else None)} | "
                f"{_fmt(tb and tb['lds'])}{treg} |"
            )
    _extra_tables(grid, a.K)


def _seed_mean_summary(cells: dict[tuple, dict]) -> None:
    """Per task whose whole lr x epochs grid has >= 3 seeds: the best cell by the seed mean, and the
    defaults' and the constant rule's seed means against it."""
    rule_p = OUT / "rule.json"
    const = json.loads(rule_p.read_text()).get("constant") if rule_p.exists() else None
    by_task: dict[str, dict] = {}
    for (t, lr, ep, rho), v in cells.items():
        if rho is None:
            by_task.setdefault(t, {})[(lr, ep)] = v
    rows = []
    for t in [x.name for x in transfer.tasks()]:
        g = by_task.get(t)
        if not g or min(len(v) for v in g.values()) < 3:
            continue
        mean = {k: float(np.mean([v[s] for s in sorted(v)[:3]])) for k, v in g.items()}
        (blr, bep), best = max(mean.items(), key=lambda kv: kv[1])
        dflt = mean.get((DEFAULT_LR, DEFAULT_EPOCHS))
        cst = mean.get((const["lr"], const["epochs"])) if const else None
        rows.append((t, transfer.get(t).half, blr, bep, best, dflt, cst))
    if not rows:
        return
    print("\nmean of 3 DAUNCE seeds per cell (seeds 0, 1, 2), tasks whose whole grid has them\n")
    print(
        "| task | half | best cell (lr, epochs) | best mean LDS | defaults mean | defaults / best | constant-rule mean | constant / best |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t, h, blr, bep, best, dflt, cst in rows:
        print(
            f"| {t} | {h} | {blr:g}, {bep:g} | {best:.3f} | {_fmt(dflt)} | {_fmt(dflt / best if dflt else None)} | "
            f"{_fmt(cst)} | {_fmt(cst / best if cst else None)} |"
        )


def _extra_tables(grid: list[dict], K: int) -> None:
    """Seed replicates (LDS noise) and rho cells, where recorded."""
    cells: dict[tuple, dict] = {}
    for r in grid:
        if r["K"] == K:
            cells.setdefault((r["task"], r["lr"], r["epochs"], r.get("rho")), {})[r.get("seed", 0)] = r["lds"]
    rule_p = OUT / "rule.json"
    const = json.loads(rule_p.read_text()).get("constant") if rule_p.exists() else None
    shown = {(DEFAULT_LR, DEFAULT_EPOCHS)} | ({(const["lr"], const["epochs"])} if const else set())
    # replicates of the defaults' and the constant rule's cells (the whole grid's: the seed-mean table)
    reps = {k: v for k, v in cells.items() if len(v) > 1 and k[3] is None and (k[1], k[2]) in shown}
    if reps:
        print(f"\nseed replicates of the defaults' and the constant rule's cells, K = {K} (seed 0 is the grid's)\n")
        print("| task | lr | epochs | LDS per seed | range |")
        print("|---|---|---|---|---|")
        for (t, lr, ep, _), v in sorted(reps.items()):
            vals = [v[s] for s in sorted(v)]
            print(
                f"| {t} | {lr:g} | {ep:g} | "
                + ", ".join(f"{x:.3f}" for x in vals)
                + f" | {max(vals) - min(vals):.3f} |"
            )
    _seed_mean_summary(cells)
    _auto_table(K)
    rho = {k: v for k, v in cells.items() if k[3] is not None}
    if rho:
        print(f"\nrho (the `hessian` perturbation's strength; library default 0.03), K = {K}\n")
        print("| task | lr | epochs | rho | LDS | LDS at the default rho |")
        print("|---|---|---|---|---|---|")
        for (t, lr, ep, r), v in sorted(rho.items()):
            base = cells.get((t, lr, ep, None), {}).get(0)
            print(f"| {t} | {lr:g} | {ep:g} | {r:g} | {v[0]:.3f} | {_fmt(base)} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "cmd",
        choices=["build", "grid", "sharp", "fit-rule", "calibrated", "auto", "trak", "table"],
        help="what to run",
    )
    ap.add_argument("--half", default="all", choices=["all", "design", "heldout", "fresh", "every"])
    ap.add_argument("--tasks", help="comma list of task names (e.g. digits-adam1e-2)")
    ap.add_argument("--K", type=int, default=512)
    ap.add_argument("--lr", default="3e-4,1e-3,3e-3,1e-2", help="grid: copies' learning rates")
    ap.add_argument("--epochs", default="5,10,20", help="grid: copies' epochs")
    ap.add_argument("--auto-epochs", default="auto", help="auto: the copies' epochs ('auto': the library's)")
    ap.add_argument(
        "--rho", default="", help="grid: comma list of rho ('default' = the library's); empty: default only"
    )
    ap.add_argument("--reg", default="0,1e-2,1e-1,1,10", help="trak: regularization grid")
    ap.add_argument("--subsample", type=int, default=512, help="sharp: training examples in the Hessian")
    ap.add_argument("--iters", type=int, default=30, help="sharp: power iterations at most")
    ap.add_argument("--seed", type=int, default=0, help="grid: DAUNCE seed (replicates measure the LDS noise)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--redo", action="store_true", help="run cells already recorded again")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    {
        "build": cmd_build,
        "grid": cmd_grid,
        "sharp": cmd_sharp,
        "fit-rule": cmd_fit_rule,
        "calibrated": cmd_calibrated,
        "auto": cmd_auto,
        "trak": cmd_trak,
        "table": cmd_table,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
