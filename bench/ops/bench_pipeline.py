"""DAUNCE end to end: daunce_fast vs the reference approach, at equal K, on the digits MLP.

Reference approach (what the paper's public code does): for each model k, a fresh Python process
loads θ0, trains model k alone on its subset with the same perturbed objective and saves a
checkpoint; then every checkpoint is reloaded to compute the train and test losses, which are
pickled, and the full covariance matrix is computed in memory with numpy. ``--in-process`` runs
the K trainings as a loop in this process instead (no process start-up: a lower bound on the
reference's cost).
daunce_fast: Daunce(...).fit(train, record={"test": test}) then .scores(...) (full matrix).

    python bench/ops/bench_pipeline.py [--models 64] [--epochs 10] [--threads 1] [--in-process]
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness
from harness import print_table, record

from daunce_fast.daunce import Daunce, DaunceConfig
from daunce_fast.daunce.heads import hessian_direction
from daunce_fast.daunce.objectives import base_terms, cross_entropy_per_example, daunce_loss
from daunce_fast.daunce.trainer import ChunkPlan, lr_factor, make_optimizer
from daunce_fast.demos.tasks import load_tabular, mlp, train_classifier


def train_one(theta0, task, cfg: DaunceConfig, k: int, workdir: Path) -> None:
    """Train model k alone from θ0 and save its checkpoint (one reference-code process)."""
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        z0_all = theta0(x)
    t0_all, g0_all = base_terms(z0_all, y, cross_entropy_per_example)
    model = copy.deepcopy(theta0)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(cfg, list(model.parameters()))
    plan = ChunkPlan(cfg, [k], len(y))
    plan.prepare_noise(z0_all.shape[1])
    sq0 = torch.softmax(z0_all, -1).sqrt()
    model.train()
    for step in range(plan.total_steps):
        idx, c, noise = plan.batch(step)
        idx = idx.reshape(-1)
        g0 = g0_all[idx] if noise is None else g0_all[idx] + hessian_direction(sq0[idx], *noise)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, step, plan.total_steps)
        obj, _ = daunce_loss(
            model(x[idx]),
            y[idx],
            c,
            num_models=1,
            objective=cfg.objective,
            gamma=cfg.gamma,
            target_fn=cross_entropy_per_example,
            z0=z0_all[idx],
            t0=t0_all[idx],
            g0=g0,
        )
        opt.zero_grad()
        obj.sum().backward()
        opt.step()
    torch.save(model.state_dict(), workdir / f"model_{k}.pt")


def reference_run(theta0, task, cfg: DaunceConfig, workdir: Path, in_process: bool = False) -> np.ndarray:
    x, y = task.x_train, task.y_train
    torch.save({"theta0": theta0.state_dict(), "cfg": cfg.to_json()}, workdir / "setup.pt")
    for k in range(cfg.num_models):
        if in_process:
            train_one(theta0, task, cfg, k, workdir)
        else:
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--train-one",
                    str(k),
                    "--workdir",
                    str(workdir),
                    "--threads",
                    str(torch.get_num_threads()),
                ],
                check=True,
            )
    losses = {"train": [], "test": []}
    for k in range(cfg.num_models):
        model = copy.deepcopy(theta0)
        model.load_state_dict(torch.load(workdir / f"model_{k}.pt"))
        with torch.no_grad():
            losses["train"].append(cross_entropy_per_example(model(x), y).numpy())
            losses["test"].append(cross_entropy_per_example(model(task.x_test), task.y_test).numpy())
    with open(workdir / "losses.pkl", "wb") as f:
        pickle.dump(losses, f)
    with open(workdir / "losses.pkl", "rb") as f:
        losses = pickle.load(f)
    a, b = np.stack(losses["train"]), np.stack(losses["test"])
    a, b = a - a.mean(0), b - b.mean(0)
    return a.T @ b / (a.shape[0] - 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=None, help="default: the library's default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--in-process", action="store_true", help="reference trainings as a loop in this process")
    ap.add_argument("--train-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_tabular("digits", seed=0)
    if args.train_one is not None:  # one reference-code process
        setup = torch.load(Path(args.workdir) / "setup.pt")
        theta0 = mlp(64, 10, seed=0)
        theta0.load_state_dict(setup["theta0"])
        cfg = DaunceConfig(**json.loads(setup["cfg"]))
        train_one(theta0, task, cfg, args.train_one, Path(args.workdir))
        return
    theta0 = train_classifier(mlp(64, 10, seed=0), task.x_train, task.y_train, epochs=30, lr=3e-3, seed=0)
    kw = dict(num_models=args.models, seed=0)
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    cfg = DaunceConfig(**kw).validate()
    train = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    test = torch.utils.data.TensorDataset(task.x_test, task.y_test)

    t0 = time.perf_counter()
    d = Daunce(theta0, workdir=tempfile.mkdtemp(prefix="bench_df_"), **kw)
    d.fit(train, record={"test": test})
    s_fast = np.asarray(d.scores("train", "test", method="covariance"))
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    s_ref = reference_run(theta0, task, cfg, Path(tempfile.mkdtemp(prefix="bench_ref_")), in_process=args.in_process)
    t_ref = time.perf_counter() - t0

    rel = float(np.abs(s_fast - s_ref).max() / np.abs(s_ref).max())
    corr = float(np.corrcoef(s_fast.ravel(), s_ref.ravel())[0, 1])
    ref = "loop in one process" if args.in_process else "one process per model"
    rows = [
        {
            "case": f"K={args.models} epochs={cfg.epochs} digits MLP, reference: {ref}",
            "daunce_fast_s": t_fast,
            "reference_s": t_ref,
            "speedup": t_ref / t_fast,
            "max_rel_diff": rel,
            "score_corr": corr,
        }
    ]
    print_table(rows, ["case", "daunce_fast_s", "reference_s", "speedup", "max_rel_diff", "score_corr"])
    record("pipeline_vs_reference", rows)


if __name__ == "__main__":
    main()
