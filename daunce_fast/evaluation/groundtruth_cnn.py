"""LDS ground truth for a small CNN with BatchNorm on scikit-learn's digits as 1x8x8 images: θ0 plus
S models retrained on random 50% subsets, all trained together in one batched pass.

The architecture (``cnn``): Conv2d(1, c1, 3, pad 1, no bias) + BatchNorm2d + ReLU, Conv2d(c1, c2, 3, pad 1) +
BatchNorm2d + ReLU, MaxPool2d(2), Flatten, Linear(c2 * 4 * 4, 10). The images are the standardised
digits features of ``daunce_fast.demos.tasks.load_tabular("digits")`` (same split as the MLP ground
truth) reshaped to [N, 1, 8, 8].

``build(recipe, ...)`` returns a dict of the same form as ``groundtruth.build`` (recipe, theta0,
extra_ckpts, subsets, targets, model_seeds, info), with ``recipe["arch"] == "cnn"``; the state
dicts hold the BatchNorm running statistics too. ``load_task`` / ``model_from_state`` rebuild the
task and the model (eval mode: BatchNorm normalises with the running statistics) from such a dict.

The batched trainer (``train_batched``) stacks the S models' parameters and buffers
(torch.func.stack_module_state) and runs ``torch.func.functional_call`` under ``vmap`` over the
model axis: model s sees only its own minibatch, so BatchNorm's batch statistics in train mode are
over model s's batch alone and its running statistics are model s's own (vmap over batched buffers
updates each model's slice). The loss is the sum over models of each model's own batch mean, so
every model gets exactly its own gradient, and one Adam/SGD instance over the stacked tensors keeps
independent per-model state (the optimisers are elementwise). Minibatch orders are those of
``daunce_fast.demos.tasks.train_classifier`` seeded with the model's seed (``groundtruth.epoch_orders``),
so the batched pass is the same computation as ``train_classifier(cnn(seed=s), x[rows_s], y[rows_s],
seed=s, ...)`` for each model; tests/evaluation/test_groundtruth_cnn.py checks this against the plain loop.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..demos.tasks import TabularTask, load_tabular
from .groundtruth import draw_subsets, epoch_orders, stable_ce

__all__ = [
    "CNNRecipe",
    "cnn",
    "load_image_task",
    "train_batched",
    "train_plain",
    "per_example_loss",
    "build",
    "load_task",
    "model_from_state",
]


@dataclass
class CNNRecipe:
    """How θ0 and every retrained model are trained (same recipe for all, only the seed changes)."""

    channels: tuple[int, int] = (16, 32)
    epochs: int = 20
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    bn_momentum: float = 0.1
    dataset: str = "digits"
    test_size: float = 0.2
    split_seed: int = 0
    seed: int = 0  # θ0's init/minibatch seed
    arch: str = field(default="cnn")


def cnn(num_classes: int = 10, channels: tuple[int, int] = (16, 32), seed: int = 0, bn_momentum: float = 0.1):
    """The CNN of this module for 1x8x8 inputs, initialised from ``seed`` (weights U(±1/sqrt(fan_in)),
    the head's bias U(±0.05), BatchNorm scale 1 and shift 0). The convolutions have no bias: the
    BatchNorm after each removes it (its gradient is rounding noise, which Adam would amplify)."""
    c1, c2 = channels
    net = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False),
        nn.BatchNorm2d(c1, momentum=bn_momentum),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False),
        nn.BatchNorm2d(c2, momentum=bn_momentum),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, num_classes),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / (m.weight[0].numel() ** 0.5)
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.05, 0.05, generator=g)
    return net


def load_image_task(recipe: CNNRecipe | dict) -> TabularTask:
    """The digits task of ``load_tabular`` with x reshaped to [N, 1, 8, 8] images."""
    r = asdict(recipe) if isinstance(recipe, CNNRecipe) else recipe
    t = load_tabular(r["dataset"], test_size=r["test_size"], seed=r["split_seed"])
    if t.x_train.shape[1] != 64:
        raise ValueError(f"the CNN ground truth needs 8x8 images (digits), got {t.x_train.shape[1]} features")
    t.x_train = t.x_train.view(-1, 1, 8, 8)
    t.x_test = t.x_test.view(-1, 1, 8, 8)
    return t


def _model(recipe: dict, num_classes: int, seed: int):
    return cnn(num_classes, tuple(recipe["channels"]), seed=seed, bn_momentum=recipe["bn_momentum"])


def train_plain(model, x, y, *, epochs, lr, batch_size, weight_decay, seed, optimizer="adam"):
    """The reference: one model trained alone (``daunce_fast.demos.tasks.train_classifier``)."""
    from ..demos.tasks import train_classifier

    return train_classifier(
        model,
        x,
        y,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        seed=seed,
        optimizer=optimizer,
    )


def _batched_call(template, training: bool):
    """f(params, buffers, x) -> logits, for one model; vmap it over the stacked model axis."""

    def f(p, b, xb):
        return torch.func.functional_call(template, (p, b), (xb,))

    template.train(training)
    return torch.func.vmap(f)


def train_batched(
    models,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    orders: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    weight_decay: float,
    optimizer: str = "adam",
) -> tuple[dict, dict]:
    """Train the S modules ``models`` (same architecture, their own initial weights) at once, model s
    on x[rows[s]], in place of ``train_plain(models[s], x[rows[s]], y[rows[s]], seed=seeds[s], ...)``.

    x [N, ...], y [N]: the full training set; rows [S, n] long: each model's examples (equal sizes);
    orders [epochs, S, n]: positions into rows[s] per epoch (groundtruth.epoch_orders of the seeds).
    Returns (params, buffers): dicts of stacked tensors [S, ...] (detached), buffers holding each
    model's own BatchNorm running statistics. The modules themselves are not changed.
    """
    S, n = rows.shape
    if len(models) != S:
        raise ValueError(f"{len(models)} models for {S} row sets")
    if orders.shape[1:] != (S, n):
        raise ValueError(f"orders must be [epochs, {S}, {n}], got {tuple(orders.shape)}")
    params, buffers = torch.func.stack_module_state(list(models))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    template = _template(models[0])
    if optimizer == "adam":
        opt = torch.optim.Adam(params.values(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params.values(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    fwd = _batched_call(template, training=True)
    for order in orders:  # [S, n]
        ex = rows.gather(1, order)  # [S, n] training-set indices in this epoch's order
        for st in range(0, n, batch_size):
            idx = ex[:, st : st + batch_size]  # [S, b]
            b = idx.shape[1]
            logits = fwd(params, buffers, x[idx])  # [S, b, C]; BatchNorm stats per model, buffers updated per model
            loss = F.cross_entropy(logits.reshape(S * b, -1), y[idx].reshape(-1), reduction="sum") / b
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}, buffers


def _template(model):
    """A copy of ``model`` on the meta device: functional_call only needs its structure."""
    import copy

    return copy.deepcopy(model).to("meta")


@torch.no_grad()
def stacked_logits(template, params: dict, buffers: dict, x: torch.Tensor, block: int = 512) -> torch.Tensor:
    """[S, M, C] eval-mode logits (BatchNorm with each model's running statistics) of x [M, ...]."""
    t = _template(template)
    fwd = _batched_call(t, training=False)
    S = next(iter(params.values())).shape[0]
    out = []
    for j in range(0, len(x), block):
        xb = x[j : j + block]
        out.append(fwd(params, buffers, xb.expand(S, *xb.shape)))
    return torch.cat(out, dim=1)


def per_example_loss(template, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[S, M] float64 cross-entropy (stable_ce) of every stacked model on every example."""
    z = stacked_logits(template, params, buffers, x)
    return stable_ce(z, y.expand(z.shape[0], -1))


def unstack(params: dict, buffers: dict, s: int) -> dict:
    """state_dict of model s."""
    return {k: v[s].detach().clone() for k, v in {**params, **buffers}.items()}


def train_many(task, recipe: dict, seeds, rows: torch.Tensor) -> tuple[dict, dict]:
    """Train len(seeds) CNNs from scratch with ``recipe``, model k on rows[k] with seed seeds[k]."""
    models = [_model(recipe, task.num_classes, int(s)) for s in seeds]
    orders = epoch_orders(seeds, rows.shape[1], recipe["epochs"])
    return train_batched(
        models,
        task.x_train,
        task.y_train,
        rows,
        orders,
        lr=recipe["lr"],
        batch_size=recipe["batch_size"],
        weight_decay=recipe["weight_decay"],
        optimizer=recipe["optimizer"],
    )


def build(
    recipe: CNNRecipe,
    num_subsets: int = 100,
    extra_ckpts: int = 4,
    subset_seed: int = 1234,
    chunk: int = 100,
    log=None,
) -> dict:
    """Train θ0, the extra full-data checkpoints and the S subset models (one run each); return the
    cache dict (see the module docstring). ``log``: optional callable for progress lines."""
    r = asdict(recipe)
    r["channels"] = list(r["channels"])
    task = load_image_task(r)
    n = len(task.y_train)
    info = {"n_train": n, "n_test": len(task.y_test)}
    template = _model(r, task.num_classes, 0)

    t0 = time.perf_counter()
    full_seeds = [recipe.seed + k for k in range(1 + extra_ckpts)]
    full_rows = torch.arange(n).expand(len(full_seeds), n).contiguous()
    p, b = train_many(task, r, full_seeds, full_rows)
    info["full_models_s"] = time.perf_counter() - t0
    states = [unstack(p, b, k) for k in range(len(full_seeds))]
    acc = (stacked_logits(template, p, b, task.x_test).argmax(-1) == task.y_test).float().mean(1)
    info["full_test_acc"] = acc.tolist()
    if log:
        log(f"full-data models ({len(full_seeds)}): {info['full_models_s']:.1f}s, test acc {info['full_test_acc']}")

    subsets = draw_subsets(n, num_subsets, subset_seed)
    rows_all = torch.stack([m.nonzero().squeeze(1) for m in subsets])  # sorted indices, [S, n//2]
    seeds = torch.arange(num_subsets).view(num_subsets, 1) + 10_000
    flat = seeds.flatten().tolist()
    t0 = time.perf_counter()
    losses, accs = [], []
    for st in range(0, num_subsets, chunk):  # chunks only bound memory; each chunk is one batched pass
        p, b = train_many(task, r, flat[st : st + chunk], rows_all[st : st + chunk])
        losses.append(per_example_loss(template, p, b, task.x_test, task.y_test))
        z = stacked_logits(template, p, b, task.x_test)
        accs.append((z.argmax(-1) == task.y_test).float().mean(1))
        if log:
            log(f"subset models {st + len(accs[-1])}/{num_subsets}: {time.perf_counter() - t0:.1f}s")
    info["subset_models_s"] = time.perf_counter() - t0
    info["subset_test_acc_mean"] = torch.cat(accs).mean().item()
    info["torch_threads"] = torch.get_num_threads()
    return {
        "recipe": r,
        "theta0": states[0],
        "extra_ckpts": states[1:],
        "subsets": subsets,
        "targets": -torch.cat(losses),
        "model_seeds": seeds,
        "runs_per_subset": 1,
        "subset_seed": subset_seed,
        "info": info,
    }


def load_task(gt: dict) -> TabularTask:
    """The image task of a CNN ground-truth dict."""
    return load_image_task(gt["recipe"])


def model_from_state(gt: dict, state: dict | None = None):
    """The CNN of ``gt``'s recipe loaded with ``state`` (θ0 by default), in eval mode."""
    r = gt["recipe"]
    m = _model(r, 10, 0)
    m.load_state_dict(gt["theta0"] if state is None else state)
    return m.eval()
