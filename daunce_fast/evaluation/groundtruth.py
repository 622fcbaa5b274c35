"""LDS ground truth for the bundled tabular tasks (daunce_fast.demos.tasks): θ0 plus S models
retrained on random 50% subsets of the training set, all trained together in one batched pass.

``build(recipe, ...)`` returns a dict:
    recipe        dict: data set, split, MLP shape, optimiser settings, seeds (everything to rebuild it)
    theta0        state_dict of the model trained on the full training set (seed recipe["seed"])
    extra_ckpts   list of state_dicts: more full-data models (seeds 1, 2, ...), for TRAK ensembles
    subsets       [S, N_train] bool, subsets[s, i] = training example i in subset s (exactly N//2 each)
    targets       [S, N_test] float64, NEGATIVE cross-entropy of retrained model s on test example j
                  (higher = better, dattri's convention), averaged over runs_per_subset seeds;
                  computed stably (stable_ce) so that confident examples do not round to 0
    model_seeds   [S, runs_per_subset] int64, init + minibatch seed of every retrained model
    info          timings, accuracies

The batched pass (stacked weights [S, out, in], torch.bmm, per-model minibatches and per-model
Adam/SGD state) is the same computation as ``daunce_fast.demos.tasks.train_classifier`` run on
each subset with the model's seed: the optimisers are elementwise, so one torch.optim instance over
stacked tensors keeps independent per-model state, and the loss is the sum over models of each
model's own batch mean, so every model gets exactly its own gradient.
tests/evaluation/test_lds_groundtruth.py checks this against the plain trainer.

bench/quality/lds_data.py builds and caches these dicts for the LDS studies.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..demos.tasks import load_tabular, mlp


@dataclass
class Recipe:
    """How θ0 and every retrained model are trained (same recipe for all, only the seed changes)."""

    dataset: str
    hidden: int
    depth: int
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    optimizer: str = "adam"
    test_size: float = 0.2
    split_seed: int = 0
    seed: int = 0  # θ0's init/minibatch seed


# ----------------------------------------------------------------------------------------------
# Batched MLP: S independent copies of tasks.mlp, weights stacked along a leading model axis.
# ----------------------------------------------------------------------------------------------
def stack_mlps(models) -> list[torch.Tensor]:
    """[W0 [S,out,in], b0 [S,out], W1, b1, ...] from a list of S nn.Sequential MLPs (Linear/ReLU)."""
    per_model = [[p.detach() for p in m.parameters()] for m in models]
    return [torch.stack(ps).clone() for ps in zip(*per_model)]


def unstack_state(params: list[torch.Tensor], s: int, template) -> dict:
    """state_dict of model s, keyed like ``template``'s (an tasks.mlp of the same shape)."""
    keys = [k for k, _ in template.named_parameters()]
    return {k: p[s].detach().clone() for k, p in zip(keys, params)}


def batched_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of every model. x: [S, B, d] (model s sees x[s]) or [B, d] (shared); returns [S, B, C].

    Same as ``torch.stack([mlp_s(x[s]) for s in range(S)])`` for nn.Sequential(Linear, ReLU, ...).
    """
    h = x
    n_layers = len(params) // 2
    for l in range(n_layers):
        w, b = params[2 * l], params[2 * l + 1]
        if h.dim() == 2:  # shared input: one GEMM against all stacked weights at once
            h = torch.einsum("bd,sod->sbo", h, w) + b[:, None, :]
        else:
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
        if l < n_layers - 1:
            h = torch.relu(h)
    return h


def epoch_orders(seeds, n: int, epochs: int) -> torch.Tensor:
    """[epochs, S, n] minibatch order of every model: exactly the permutations train_classifier draws
    (one torch.Generator per model seeded with its seed, one randperm(n) per epoch).

    A Python loop over models here only draws indices (microseconds each); all compute is batched.
    """
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return torch.stack([torch.stack([torch.randperm(n, generator=g) for g in gens]) for _ in range(epochs)])


def train_batched(
    params: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    orders: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    weight_decay: float,
    optimizer: str = "adam",
) -> list[torch.Tensor]:
    """Train S stacked MLPs at once, model s on x[rows[s]] (its training subset), in place of
    ``train_classifier(mlp_s, x[rows[s]], y[rows[s]], ...)`` for each s.

    params: stacked initial weights (see stack_mlps), updated and returned (detached leaves).
    x [N, d], y [N]: the full training set; rows [S, n] long: each model's examples (equal sizes);
    orders [epochs, S, n]: positions into rows[s] per epoch (see epoch_orders).
    """
    S, n = rows.shape
    if orders.shape[1:] != (S, n):
        raise ValueError(f"orders must be [epochs, {S}, {n}], got {tuple(orders.shape)}")
    params = [p.detach().clone().requires_grad_(True) for p in params]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    for order in orders:  # [S, n]
        ex = rows.gather(1, order)  # [S, n] training-set indices in this epoch's order
        for st in range(0, n, batch_size):
            idx = ex[:, st : st + batch_size]  # [S, b]
            logits = batched_forward(params, x[idx])  # [S, b, C]
            b = idx.shape[1]
            # sum over models of each model's own batch mean: model s gets exactly its own gradient
            loss = F.cross_entropy(logits.reshape(S * b, -1), y[idx].reshape(-1), reduction="sum") / b
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return [p.detach() for p in params]


def stable_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy [..., C] -> [...] in float64 as softplus(logsumexp_{c != y} z_c - z_y)
    = log1p(sum_{c != y} exp(z_c - z_y)). Same value as F.cross_entropy, but a confident example keeps
    its tiny loss instead of rounding to exactly 0 (fp32 logsumexp(z) - z_y does for margins > ~17),
    which would make its target constant across subsets and its LDS undefined."""
    z = logits.double()
    zy = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = z.masked_fill(torch.arange(z.shape[-1]) == y.unsqueeze(-1), float("-inf"))
    return F.softplus(torch.logsumexp(others, dim=-1) - zy)


@torch.no_grad()
def per_example_loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[S, M] float64 cross-entropy of every stacked model on every example of (x [M, d], y [M])."""
    logits = batched_forward(params, x)  # [S, M, C]
    return stable_ce(logits, y.expand(logits.shape[0], -1))


def train_many(task, recipe: Recipe, seeds, rows: torch.Tensor) -> list[torch.Tensor]:
    """Train len(seeds) models from scratch with ``recipe``, model k on rows[k] with seed seeds[k]."""
    d_in = task.x_train.shape[1]
    init = stack_mlps([mlp(d_in, task.num_classes, recipe.hidden, recipe.depth, seed=int(s)) for s in seeds])
    orders = epoch_orders(seeds, rows.shape[1], recipe.epochs)
    return train_batched(
        init,
        task.x_train,
        task.y_train,
        rows,
        orders,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
    )


def draw_subsets(n: int, num: int, seed: int) -> torch.Tensor:
    """[num, n] bool masks of random subsets of exactly n // 2 examples (without replacement)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(num, n, generator=g)
    rows = keys.argsort(dim=1)[:, : n // 2]
    mask = torch.zeros(num, n, dtype=torch.bool)
    mask.scatter_(1, rows, True)
    return mask


def build(
    recipe: Recipe,
    num_subsets: int = 100,
    runs_per_subset: int = 1,
    extra_ckpts: int = 4,
    subset_seed: int = 1234,
    chunk: int = 256,
) -> dict:
    """Train θ0, the extra full-data checkpoints and the S x runs subset models; return the cache dict."""
    task = load_tabular(recipe.dataset, test_size=recipe.test_size, seed=recipe.split_seed)
    n = len(task.y_train)
    info = {"n_train": n, "n_test": len(task.y_test)}

    # θ0 and the extra full-data models (seeds 0, 1, ..., extra_ckpts) in one batched pass
    t0 = time.perf_counter()
    full_seeds = [recipe.seed + k for k in range(1 + extra_ckpts)]
    full_rows = torch.arange(n).expand(len(full_seeds), n).contiguous()
    full = train_many(task, recipe, full_seeds, full_rows)
    info["full_models_s"] = time.perf_counter() - t0
    template = mlp(task.x_train.shape[1], task.num_classes, recipe.hidden, recipe.depth)
    states = [unstack_state(full, k, template) for k in range(len(full_seeds))]
    with torch.no_grad():
        acc = (batched_forward(full, task.x_test).argmax(-1) == task.y_test).float().mean(1)
    info["full_test_acc"] = acc.tolist()

    # retrained models: subset s, run r -> seed 10_000 + s * runs + r
    subsets = draw_subsets(n, num_subsets, subset_seed)
    rows_all = torch.stack([m.nonzero().squeeze(1) for m in subsets])  # sorted indices, [S, n//2]
    seeds = torch.arange(num_subsets * runs_per_subset).view(num_subsets, runs_per_subset) + 10_000
    flat_seeds = seeds.flatten().tolist()
    flat_rows = rows_all.repeat_interleave(runs_per_subset, dim=0)
    t0 = time.perf_counter()
    losses, accs = [], []
    for st in range(0, len(flat_seeds), chunk):  # chunks only bound memory; each chunk is one pass
        p = train_many(task, recipe, flat_seeds[st : st + chunk], flat_rows[st : st + chunk])
        losses.append(per_example_loss(p, task.x_test, task.y_test))
        with torch.no_grad():
            accs.append((batched_forward(p, task.x_test).argmax(-1) == task.y_test).float().mean(1))
    info["subset_models_s"] = time.perf_counter() - t0
    loss = torch.cat(losses).view(num_subsets, runs_per_subset, -1).mean(1)
    info["subset_test_acc_mean"] = torch.cat(accs).mean().item()
    info["torch_threads"] = torch.get_num_threads()
    return {
        "recipe": asdict(recipe),
        "theta0": states[0],
        "extra_ckpts": states[1:],
        "subsets": subsets,
        "targets": -loss,
        "model_seeds": seeds,
        "runs_per_subset": runs_per_subset,
        "subset_seed": subset_seed,
        "info": info,
    }


def model_from_state(gt: dict, state: dict | None = None):
    """An tasks.mlp with the recipe's shape, loaded with ``state`` (θ0 by default), in eval mode."""
    r = gt["recipe"]
    task = load_task(gt)
    m = mlp(task.x_train.shape[1], task.num_classes, r["hidden"], r["depth"])
    m.load_state_dict(gt["theta0"] if state is None else state)
    return m.eval()


def load_task(gt: dict):
    r = gt["recipe"]
    return load_tabular(r["dataset"], test_size=r["test_size"], seed=r["split_seed"])
