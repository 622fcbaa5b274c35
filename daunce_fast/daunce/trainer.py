"""Train one chunk of K_c perturbed models together: one batched forward/backward per step.

The model carries K_c adapters (daunce_fast.lora); row block k of every batch is model k's
minibatch from its own subset. The per-model objectives are summed, so each adapter's gradient
is that of its own objective; Adam/SGD update elementwise and clipping is per adapter, so no
statistic ever mixes two models, and a model trains the same in any chunk.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import perturb
from .modes import copy_modes

# Perturbation "hessian": a chunk's normals over its members are drawn once when they fit in this
# many floats (256 MB), else hashed per step (the same values either way: counter-based draws).
NOISE_TABLE_MAX = 1 << 26


def steps_per_model(cfg, n_k: int) -> int:
    spe = math.ceil(n_k / cfg.batch_size)
    return int(cfg.steps) if cfg.steps is not None else max(1, int(round(cfg.epochs * spe)))


class ChunkPlan:
    """Subsets, weights and batch order of models ``ids`` (global indices)."""

    def __init__(self, cfg, ids: list[int], n: int):
        self.cfg, self.ids = cfg, list(ids)
        draws = [perturb.subset_and_xi(cfg.seed, k, n, cfg.ratio, cfg.antithetic) for k in self.ids]
        self.members = torch.from_numpy(np.stack([d[0] for d in draws]))  # [K_c, n_k]
        self.c = torch.from_numpy(
            np.stack([perturb.weights_c(cfg.objective, cfg.rho, d[1], cfg.perturbation) for d in draws])
        )
        self.n_k = self.members.shape[1]
        self.noise = None
        if cfg.perturbation == "hessian":
            ns = [perturb.noise_id_and_sign(k, cfg.antithetic) for k in self.ids]
            self.noise = (
                torch.tensor([d[0] for d in ns], dtype=torch.int64),
                torch.tensor([cfg.rho * d[1] for d in ns], dtype=torch.float32),
            )
        self._table, self._num_outputs = None, None
        self.spe = math.ceil(self.n_k / cfg.batch_size)
        self.total_steps = steps_per_model(cfg, self.n_k)
        self._orders: dict[int, torch.Tensor] = {}

    def prepare_noise(self, num_outputs: int) -> None:
        """Set the number of model outputs the "hessian" normals have (no-op for "xi")."""
        if self.noise is None:
            return
        self._num_outputs = int(num_outputs)
        if len(self.ids) * self.n_k * self._num_outputs <= NOISE_TABLE_MAX:
            self._table = perturb.hashed_normal(self.cfg.seed, self.noise[0], self.members, self._num_outputs)

    def select(self, step: int) -> torch.Tensor:
        """Positions [K_c, b] into each model's subset (into ``members``) of global ``step``."""
        epoch, pos = divmod(step, self.spe)
        if epoch not in self._orders:
            self._orders = {
                epoch: torch.from_numpy(
                    np.stack([perturb.epoch_order(self.cfg.seed, k, epoch, self.n_k) for k in self.ids])
                )
            }
        return self._orders[epoch][:, pos * self.cfg.batch_size : (pos + 1) * self.cfg.batch_size]

    def flat_positions(self, sel: torch.Tensor) -> torch.Tensor:
        """Rows [K_c * b] of a [K_c * n_k, ...] table over (model, subset position) for ``sel [K_c, b]``:
        ``(arange(K_c)[:, None] * n_k + sel).reshape(-1)``. A flat index_select on such a table is
        several times faster on the CPU than ``gather`` along dim 1 with an expanded index."""
        return (torch.arange(sel.shape[0])[:, None] * self.n_k + sel).reshape(-1)

    def indices(self, flat: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """Training-set indices [K_c, b] of the positions ``sel`` (``flat = flat_positions(sel)``)."""
        return self.members.reshape(-1).index_select(0, flat).view(sel.shape)

    def normals(self) -> torch.Tensor | None:
        """The "hessian" normals of every (model, member), [K_c, n_k, C] (after ``prepare_noise(C)``;
        the table when it was drawn, else hashed now), or None for "xi"."""
        if self.noise is None:
            return None
        if self._table is not None:
            return self._table
        return perturb.hashed_normal(self.cfg.seed, self.noise[0], self.members, self._num_outputs)

    def batch(self, step: int, sel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
        """(example indices [K_c, b], weights c [K_c, b], noise) of global ``step`` (of the positions
        ``sel = select(step)`` when given); noise is (normals [K_c, b, C], signed scales rho * s_k [K_c])
        for perturbation "hessian" (after ``prepare_noise(C)``), else None."""
        if sel is None:
            sel = self.select(step)
        flat = self.flat_positions(sel)
        idx = self.indices(flat, sel)
        noise = None
        if self.noise is not None:
            if self._num_outputs is None:
                raise RuntimeError("ChunkPlan.prepare_noise(num_outputs) must be called before batch()")
            if self._table is not None:
                normals = self._table.view(-1, self._num_outputs).index_select(0, flat).view(*sel.shape, -1)
            else:
                normals = perturb.hashed_normal(self.cfg.seed, self.noise[0], idx, self._num_outputs)
            noise = (normals, self.noise[1])
        return idx, self.c.reshape(-1).index_select(0, flat).view(sel.shape), noise


def make_optimizer(cfg, params):
    """The optimiser over the stacked adapter tensors. Its updates are elementwise, so each adapter
    keeps its own state; the fused kernels do one pass per tensor instead of one per operation."""
    fused = all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def warmup_steps(cfg, total: int) -> int:
    """Steps of linear warm-up: ``ceil(warmup * total)`` for ``cfg.extra["warmup"] > 0`` (a fraction of
    the steps; rounding up so that a small fraction of a short run, e.g. the LM default 0.03 of 30
    steps, still warms up), else 0."""
    frac = float(cfg.extra.get("warmup", 0.0))
    return min(total, math.ceil(frac * total)) if frac > 0 else 0


def lr_factor(cfg, step: int, total: int) -> float:
    """Multiplier of the learning rate at ``step`` of ``total``: ``(step + 1) / (warm + 1)`` during the
    ``warm = warmup_steps(cfg, total)`` warm-up steps (so even one warm-up step runs below the full
    rate), then 1 ("constant") or a cosine from 1 to 0 over the remaining steps ("cosine")."""
    warm = warmup_steps(cfg, total)
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.schedule == "constant":
        return 1.0
    p = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def train_chunk(model, params, examples, plan: ChunkPlan, base, head, *, progress=None) -> None:
    """Train the adapters of ``model`` (parameters ``params``) for ``plan.total_steps`` steps.

    base: the head's tables over the training set (see heads.py), or None for "blackbox".
    head: a LogitsHead or LMHead that turns a forward pass into the K per-model objectives.
    The forward passes run under modes.copy_modes (BatchNorm and dropout per cfg.batchnorm and
    cfg.dropout; θ0's running statistics are never updated); the model's modes are restored after.
    """
    cfg = plan.cfg
    opt = make_optimizer(cfg, params)
    K = len(plan.ids)
    if plan.noise is not None:
        plan.prepare_noise(base["z0"].shape[-1])
    with copy_modes(model, K, batchnorm=cfg.batchnorm, dropout=cfg.dropout, training=True):
        # the shared prefix's values over the training set (docs/pipeline.md#shared-prefix), built
        # in the training modes; None when the head has none or the model does not split
        make_prefix = getattr(head, "training_prefix", None)
        prefix = make_prefix(model, examples, K) if make_prefix is not None else None
        _steps(model, params, examples, plan, base, head, opt, progress, prefix)


def _chunk_terms(head, base, plan: ChunkPlan):
    """The head's first-order terms (LogitsHead.row_terms) of every (model, member) of the chunk,
    looked up per step by ``plan.flat_positions``; None when the head has none or when they do not fit
    in NOISE_TABLE_MAX floats (then they are computed per step from the step's rows: same values)."""
    row_terms = getattr(head, "row_terms", None)
    if row_terms is None or base is None:
        return None
    C = base["z0"].shape[-1] if base["z0"].dim() == 2 else 0
    if not C or len(plan.ids) * plan.n_k * C > NOISE_TABLE_MAX:
        return None
    noise = None if plan.noise is None else (plan.normals(), plan.noise[1])
    terms = row_terms(base, plan.members, plan.c, noise)
    if terms is not None:
        plan._table = None  # the normals are in the terms now; batch() would hash them again
    return terms


def _steps(model, params, examples, plan: ChunkPlan, base, head, opt, progress, prefix=None) -> None:
    from .. import lora

    cfg, K, device = plan.cfg, len(plan.ids), params[0].device
    table = _chunk_terms(head, base, plan)
    row_terms = getattr(head, "row_terms", None)
    for step in range(plan.total_steps):
        sel = plan.select(step)
        terms = None
        if table is not None:
            flat = plan.flat_positions(sel)
            idx = plan.indices(flat, sel)
            c, noise = None, None
            terms = tuple(t.index_select(0, flat).to(device) for t in table)
        else:
            idx, c, noise = plan.batch(step, sel)
            if row_terms is not None and base is not None:
                terms = row_terms(base, idx, c, noise)
                terms = None if terms is None else tuple(t.to(device) for t in terms)
            c = c.to(device)
        inputs, y = examples.take(idx, device)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, step, plan.total_steps)
        with lora.expected_rows(idx.numel()):  # K*b adapter-major rows: a layer seeing other sizes is an error
            extra = {} if prefix is None else {"prefix": prefix}
            if terms is not None:
                extra["terms"] = terms
            obj = head.objective(model, inputs, y, idx.reshape(-1), c, K, base, noise=noise, **extra)
        opt.zero_grad(set_to_none=True)
        obj.sum().backward()
        if cfg.max_grad_norm is not None:
            lora.clip_grad_norm_per_adapter(params, cfg.max_grad_norm)
        opt.step()
        if progress is not None:
            progress.update(1)
