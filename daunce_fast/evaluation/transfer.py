"""The transfer suite (issue 16), tabular part: θ0s that differ the way users' models differ, each
with its own LDS ground truth (100 subsets retrained with that θ0's own recipe), and the two halves
of the suite fixed before anything was run.

Tasks: every bundled data set (digits, breast_cancer, wine; MLP shape and batch size as in
bench/quality/lds_data.py) x every θ0 recipe of ``RECIPES``:

    adam1e-3   Adam lr 1e-3, 50 epochs, weight decay 1e-4 (the project's own benchmarks' recipe)
    adam3e-3   Adam lr 3e-3, 50 epochs, weight decay 1e-4
    adam1e-2   Adam lr 1e-2, 50 epochs, weight decay 1e-4
    sgdm5e-2   SGD + momentum 0.9, lr 5e-2, 50 epochs, weight decay 1e-4
    brief      Adam lr 1e-3, 5 epochs (under-fit)
    long       Adam lr 1e-3, 200 epochs, no weight decay (over-fit)

Halves (``half``), a rule written down before any ground truth was built: lay the tasks out as a
grid, data set i (in ``DATASETS`` order) x recipe j (in ``RECIPES`` order); task (i, j) is in the
DESIGN half when i + j is even, else in the HELD-OUT half (a checkerboard). Each data set then has
three recipes in each half, and every recipe is in both halves (on different data sets):

    design:   digits-{adam1e-3, adam1e-2, brief}, breast_cancer-{adam3e-3, sgdm5e-2, long},
              wine-{adam1e-3, adam1e-2, brief}
    held-out: digits-{adam3e-3, sgdm5e-2, long}, breast_cancer-{adam1e-3, adam1e-2, brief},
              wine-{adam3e-3, sgdm5e-2, long}

Calibration rules are fitted on the design half only and reported on the held-out half.

FRESH tasks (``half == "fresh"``): a third set written down (commit before any of its ground truths
was built) after the step rule of the calibration was found by looking at both halves above, so that
the rule is judged on θ0s it has never seen. They differ from the first 18 in the ways the rule
could be wrong: other data sizes (so other numbers of optimiser steps per epoch), other widths and
depths, other optimisers, batch sizes and split seeds:

    digits-small       digits, 40% train split (719 examples), MLP 64-64, Adam 1e-3, 50 ep, batch 32
    digits-wide-sgd    digits, MLP 128 (one hidden layer), SGD+momentum 1e-2, 100 ep, batch 32, wd 5e-4
    digits-deep        digits, MLP 32-32-32, Adam 3e-3, 30 ep, batch 128
    breast_cancer-wide breast_cancer, MLP 64-64, Adam 1e-2, 100 ep, batch 16, no wd
    breast_cancer-sgd  breast_cancer, MLP 16, SGD+momentum 1e-1, 30 ep, batch 64
    wine-deep          wine, MLP 16-16-16, Adam 3e-3, 100 ep, batch 8
    wine-sgd-brief     wine, MLP 32-32, SGD+momentum 1e-2, 10 ep, batch 16 (under-fit)
    digits-long-small  digits, 40% train split, MLP 64-64, Adam 3e-4, 300 ep, batch 64, no wd

and three CNN θ0s on the 1x8x8 digits images (groundtruth_cnn: conv 16 - BN - conv 32 - BN - Linear
head, 20 epochs, batch 64; written down with the FRESH tabular tasks; the library's default targets
for them are the head only):

    cnn-adam2e-3       Adam 2e-3, wd 1e-4 (bench/quality/lds_cnn.py's recipe)
    cnn-adam1e-2       Adam 1e-2, wd 1e-4
    cnn-sgdm5e-2       SGD+momentum 5e-2, wd 1e-4
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .groundtruth import Recipe

DATASETS = ("digits", "breast_cancer", "wine")

# per data set: MLP shape and θ0 batch size (bench/quality/lds_data.py's RECIPES)
BASE = {
    "digits": dict(hidden=64, depth=2, batch_size=64),
    "breast_cancer": dict(hidden=32, depth=2, batch_size=32),
    "wine": dict(hidden=32, depth=2, batch_size=16),
}

# θ0 recipes: name -> (optimizer, lr, epochs, weight_decay)
RECIPES = {
    "adam1e-3": ("adam", 1e-3, 50, 1e-4),
    "adam3e-3": ("adam", 3e-3, 50, 1e-4),
    "adam1e-2": ("adam", 1e-2, 50, 1e-4),
    "sgdm5e-2": ("sgd", 5e-2, 50, 1e-4),
    "brief": ("adam", 1e-3, 5, 1e-4),
    "long": ("adam", 1e-3, 200, 0.0),
}

# ground-truth settings shared by every task (part of the cache key)
NUM_SUBSETS = 100
SUBSET_SEED = 1234
EXTRA_CKPTS = 4  # θ0 + 4 more full-data models: TRAK-5


@dataclass(frozen=True)
class TransferTask:
    dataset: str
    recipe_name: str
    recipe: Recipe  # or groundtruth_cnn.CNNRecipe (dataset "cnn")
    half: str  # "design", "heldout" or "fresh"

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.recipe_name}"

    def key(self) -> str:
        """12 hex digits identifying the ground truth: recipe (with its seeds) and subset settings."""
        blob = json.dumps(
            {
                "recipe": asdict(self.recipe),
                "subsets": NUM_SUBSETS,
                "subset_seed": SUBSET_SEED,
                "extra_ckpts": EXTRA_CKPTS,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cache_path(self, root: str | Path) -> Path:
        return Path(root) / f"gt_{self.name}_{self.key()}.pt"


# name -> Recipe fields (split_seed differs from the first 18 tasks' 0 so the splits are new too)
FRESH = {
    "digits-small": dict(
        dataset="digits",
        hidden=64,
        depth=2,
        epochs=50,
        lr=1e-3,
        batch_size=32,
        weight_decay=1e-4,
        test_size=0.6,
        split_seed=1,
    ),
    "digits-wide-sgd": dict(
        dataset="digits",
        hidden=128,
        depth=1,
        epochs=100,
        lr=1e-2,
        batch_size=32,
        weight_decay=5e-4,
        optimizer="sgd",
        split_seed=2,
    ),
    "digits-deep": dict(
        dataset="digits", hidden=32, depth=3, epochs=30, lr=3e-3, batch_size=128, weight_decay=1e-4, split_seed=3
    ),
    "breast_cancer-wide": dict(
        dataset="breast_cancer", hidden=64, depth=2, epochs=100, lr=1e-2, batch_size=16, weight_decay=0.0, split_seed=1
    ),
    "breast_cancer-sgd": dict(
        dataset="breast_cancer",
        hidden=16,
        depth=1,
        epochs=30,
        lr=1e-1,
        batch_size=64,
        weight_decay=1e-4,
        optimizer="sgd",
        split_seed=2,
    ),
    "wine-deep": dict(
        dataset="wine", hidden=16, depth=3, epochs=100, lr=3e-3, batch_size=8, weight_decay=1e-4, split_seed=1
    ),
    "wine-sgd-brief": dict(
        dataset="wine",
        hidden=32,
        depth=2,
        epochs=10,
        lr=1e-2,
        batch_size=16,
        weight_decay=1e-4,
        optimizer="sgd",
        split_seed=2,
    ),
    "digits-long-small": dict(
        dataset="digits",
        hidden=64,
        depth=2,
        epochs=300,
        lr=3e-4,
        batch_size=64,
        weight_decay=0.0,
        test_size=0.6,
        split_seed=1,
    ),
}


# name -> CNNRecipe fields (the rest at groundtruth_cnn.CNNRecipe's defaults)
CNN_FRESH = {
    "cnn-adam2e-3": dict(),
    "cnn-adam1e-2": dict(lr=1e-2),
    "cnn-sgdm5e-2": dict(lr=5e-2, optimizer="sgd"),
}


def half(dataset_index: int, recipe_index: int) -> str:
    """The halves rule: checkerboard over (data set, recipe)."""
    return "design" if (dataset_index + recipe_index) % 2 == 0 else "heldout"


def tasks(which: str = "all") -> list[TransferTask]:
    """The suite's tasks in grid order; ``which``: "all" (the 18 of the two halves), "design",
    "heldout", "fresh" (the FRESH tasks) or "every" (all 26)."""
    if which not in ("all", "design", "heldout", "fresh", "every"):
        raise ValueError(f"which must be 'all', 'design', 'heldout', 'fresh' or 'every', got {which!r}")
    if which == "fresh":
        from .groundtruth_cnn import CNNRecipe

        tab = [TransferTask(r["dataset"], name.split("-", 1)[1], Recipe(**r), "fresh") for name, r in FRESH.items()]
        return tab + [TransferTask("cnn", n.split("-", 1)[1], CNNRecipe(**r), "fresh") for n, r in CNN_FRESH.items()]
    if which == "every":
        return tasks("all") + tasks("fresh")
    out = []
    for i, ds in enumerate(DATASETS):
        for j, (rname, (opt, lr, epochs, wd)) in enumerate(RECIPES.items()):
            r = Recipe(ds, epochs=epochs, lr=lr, weight_decay=wd, optimizer=opt, **BASE[ds])
            t = TransferTask(ds, rname, r, half(i, j))
            if which in ("all", t.half):
                out.append(t)
    return out


def get(name: str) -> TransferTask:
    """A task by its name, e.g. "digits-adam1e-2"."""
    for t in tasks("every"):
        if t.name == name:
            return t
    raise KeyError(f"no transfer task {name!r}; have {', '.join(t.name for t in tasks('every'))}")


def with_recipe(task: TransferTask, **changes) -> TransferTask:
    """The same task with some recipe fields changed (for quick tests)."""
    return replace(task, recipe=replace(task.recipe, **changes))
