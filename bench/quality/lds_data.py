"""LDS ground truth for the bundled tabular tasks: θ0 plus S models retrained on random 50% subsets.

    PYTHONPATH=$PWD python bench/quality/lds_data.py --dataset digits [--subsets 100] [--threads 1]

Writes bench/out/lds_<dataset>.pt: torch.save of the dict of
daunce_fast.evaluation.groundtruth.build (its docstring gives every field).

All retrained models of one call are trained together in one batched pass (stacked weights
[S, out, in], torch.bmm, per-model minibatches and per-model Adam/SGD state), which is the same
computation as ``daunce_fast.demos.tasks.train_classifier`` run on each subset with the model's seed:
the optimisers are elementwise, so one torch.optim instance over stacked tensors keeps independent
per-model state, and the loss is the sum over models of each model's own batch mean, so every
model gets exactly its own gradient. tests/evaluation/test_lds_groundtruth.py checks this against the plain
trainer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daunce_fast.evaluation.groundtruth import Recipe, build, load_task, model_from_state  # noqa: E402, F401 (re-exported to the LDS studies)

OUT = ROOT / "bench" / "out"


# Defaults per data set. digits: the MLP 64-64-10 of the earlier experiment.
RECIPES = {
    "digits": Recipe("digits", hidden=64, depth=2, epochs=50, lr=1e-3, batch_size=64, weight_decay=1e-4),
    "breast_cancer": Recipe("breast_cancer", hidden=32, depth=2, epochs=50, lr=1e-3, batch_size=32, weight_decay=1e-4),
    "wine": Recipe("wine", hidden=32, depth=2, epochs=50, lr=1e-3, batch_size=16, weight_decay=1e-4),
}


def path_for(dataset: str) -> Path:
    return OUT / f"lds_{dataset}.pt"


def load_or_build(dataset: str, *, rebuild: bool = False, **kw) -> dict:
    """Load bench/out/lds_<dataset>.pt, or build it with the default recipe (and save it)."""
    p = path_for(dataset)
    if p.exists() and not rebuild:
        return torch.load(p, weights_only=False)
    gt = build(RECIPES[dataset], **kw)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(gt, p)
    return gt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--dataset", choices=sorted(RECIPES), action="append", help="repeatable; default: digits and breast_cancer"
    )
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--runs-per-subset", type=int, default=1)
    ap.add_argument("--extra-ckpts", type=int, default=4)
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--lr", type=float, help="override the recipe's learning rate")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--dry", action="store_true", help="build and print, do not save")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    for name in a.dataset or ["digits", "breast_cancer"]:
        recipe = RECIPES[name]
        if a.epochs is not None:
            recipe.epochs = a.epochs
        if a.lr is not None:
            recipe.lr = a.lr
        gt = build(recipe, a.subsets, a.runs_per_subset, a.extra_ckpts)
        i = gt["info"]
        t = gt["targets"]
        print(f"{name}: N={i['n_train']} M={i['n_test']} recipe={gt['recipe']}")
        print(f"  full models: {i['full_models_s']:.1f}s  test acc {[f'{v:.3f}' for v in i['full_test_acc']]}")
        print(
            f"  {a.subsets}x{a.runs_per_subset} subset models: {i['subset_models_s']:.1f}s  "
            f"mean test acc {i['subset_test_acc_mean']:.3f}  target mean {t.mean():.3f} "
            f"across-subset std (median over tests) {t.std(0).median():.4f}"
        )
        if not a.dry:
            OUT.mkdir(parents=True, exist_ok=True)
            torch.save(gt, path_for(name))
            print(f"  saved {path_for(name)}")


if __name__ == "__main__":
    main()
