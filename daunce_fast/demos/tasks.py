"""Small bundled tasks for the demo, the tests and the LDS evaluation: scikit-learn's tabular
data sets (no download) and a small MLP classifier trained with full-batch-free plain SGD/Adam.

Everything is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

DATASETS = ("digits", "wine", "breast_cancer")


@dataclass
class TabularTask:
    name: str
    x_train: torch.Tensor  # [N, d] float32, standardised with the training statistics
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor  # [M, d]
    y_test: torch.Tensor  # [M]
    num_classes: int
    images_train: np.ndarray | None = None  # [N, 8, 8] raw digits for figures
    images_test: np.ndarray | None = None


def load_tabular(name: str = "digits", test_size: int | float = 0.2, seed: int = 0) -> TabularTask:
    """Load a bundled scikit-learn data set, split it (stratified) and standardise the features."""
    import torch
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    loaders = {"digits": datasets.load_digits, "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    d = loaders[name]()
    x, y = d.data.astype(np.float64), d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd[sd == 0] = 1.0
    xs = ((x - mu) / sd).astype(np.float32)
    images = d.images if name == "digits" else None
    return TabularTask(
        name=name,
        x_train=torch.from_numpy(xs[tr]),
        y_train=torch.from_numpy(y[tr]),
        x_test=torch.from_numpy(xs[te]),
        y_test=torch.from_numpy(y[te]),
        num_classes=int(y.max()) + 1,
        images_train=None if images is None else images[tr],
        images_test=None if images is None else images[te],
    )


def mlp(d_in: int, num_classes: int, hidden: int = 64, depth: int = 2, seed: int = 0):
    """nn.Sequential MLP: (Linear -> ReLU) x depth -> Linear. Initialised from ``seed``."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, num_classes))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():  # re-draw with our generator so the seed alone fixes the init
            if p.dim() == 2:
                bound = 1.0 / p.shape[1] ** 0.5
                p.uniform_(-bound, bound, generator=g)
            else:
                p.uniform_(-0.05, 0.05, generator=g)
    return net


def train_classifier(
    model,
    x,
    y,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    optimizer: str = "adam",
):
    """Train ``model`` in place with cross-entropy; minibatches drawn from ``seed``. Returns the model."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = len(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model
