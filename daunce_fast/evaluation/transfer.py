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
    recipe: Recipe
    half: str  # "design" or "heldout"

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


def half(dataset_index: int, recipe_index: int) -> str:
    """The halves rule: checkerboard over (data set, recipe)."""
    return "design" if (dataset_index + recipe_index) % 2 == 0 else "heldout"


def tasks(which: str = "all") -> list[TransferTask]:
    """The suite's tasks in grid order; ``which``: "all", "design" or "heldout"."""
    if which not in ("all", "design", "heldout"):
        raise ValueError(f"which must be 'all', 'design' or 'heldout', got {which!r}")
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
    for t in tasks():
        if t.name == name:
            return t
    raise KeyError(f"no transfer task {name!r}; have {', '.join(t.name for t in tasks())}")


def with_recipe(task: TransferTask, **changes) -> TransferTask:
    """The same task with some recipe fields changed (for quick tests)."""
    return replace(task, recipe=replace(task.recipe, **changes))
