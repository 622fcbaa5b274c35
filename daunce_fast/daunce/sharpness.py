"""The sharpness measurement behind a calibration candidate for the perturbed copies' learning rate (issue 16), needing no ground truth.

Not used by the pipeline (the shipped calibration is daunce.calibration, the step rule): kept because
bench/quality/transfer_suite.py measures it beside the rule (it lost there, bench/results/transfer.md).

``sharpness``: the largest eigenvalue λ_max of the Hessian of the mean training loss at θ0, by power
iteration with Hessian-vector products (double backward) on a seeded subsample of the training set.
A model trained with step size η tends to sit where the sharpness is about 2/η (edge of stability),
so λ_max carries the scale of θ0's own training, which the library cannot otherwise know.

``lr_from_sharpness``: the copies' lr = c / λ_max, c fitted on the design half of the transfer suite
(bench/results/transfer.md), clipped to [lr_min, lr_max].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Sharpness:
    value: float  # Rayleigh quotient vᵀHv of the last iterate (≈ λ_max)
    iters: int  # Hessian-vector products used
    rel_change: float  # |λ_t - λ_{t-1}| / |λ_t| at the stop
    subsample: int  # training examples in the loss
    wall_s: float


def _subsample(n: int, k: int, seed: int) -> torch.Tensor:
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


def sharpness(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    subsample: int = 512,
    iters: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
    chunk: int = 4096,
    precond: list[torch.Tensor] | None = None,
) -> Sharpness:
    """λ_max of the Hessian of ``loss_fn(model(x_S), y_S)`` (mean over a seeded subsample S of
    ``subsample`` examples; default loss: cross-entropy) w.r.t. the model's trainable parameters.

    Power iteration from a seeded random start; stops when the Rayleigh quotient changes by less
    than ``tol`` (relative) or after ``iters`` Hessian-vector products. Deterministic for a seed.
    The model is put in eval mode for the measurement and restored; its parameters are unchanged.

    ``precond``: per-parameter diagonal D (shapes of the trainable parameters, e.g. Adam's
    1 / (sqrt(v) + eps) from ``adam_preconditioner``): then λ_max of D^½ H D^½ (the preconditioned
    sharpness that governs Adam's stability: about 38 / lr at its edge of stability, β1 = 0.9).
    """
    loss_fn = loss_fn or F.cross_entropy
    t0 = time.perf_counter()
    idx = _subsample(len(y), subsample, seed)
    xs, ys = x[idx], y[idx]
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        # gradient of the mean loss, kept differentiable (one graph reused by every HVP)
        n = len(ys)
        loss = (
            sum(
                loss_fn(model(xs[s : s + chunk]), ys[s : s + chunk]) * len(ys[s : s + chunk])
                for s in range(0, n, chunk)
            )
            / n
        )
        grads = torch.autograd.grad(loss, params, create_graph=True)
        root = None if precond is None else [d.detach().sqrt() for d in precond]

        def matvec(v):
            w = v if root is None else [r * u for r, u in zip(root, v)]
            hv = torch.autograd.grad(grads, params, grad_outputs=w, retain_graph=True)
            return hv if root is None else [r * h for r, h in zip(root, hv)]

        def power(shift: float, budget: int):
            """Power iteration on M - shift I; returns (Rayleigh quotient of M, its rel change, steps)."""
            g = torch.Generator().manual_seed(seed + 1)
            v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
            norm = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / norm for u in v]
            lam, prev, rel, used = 0.0, None, float("inf"), 0
            for it in range(1, budget + 1):
                used = it
                hv = [h - shift * u for h, u in zip(matvec(v), v)]
                lam = float(sum((a * b).sum() for a, b in zip(v, hv))) + shift
                norm = torch.sqrt(sum((h * h).sum() for h in hv))
                if not torch.isfinite(norm) or norm == 0:
                    break
                v = [h / norm for h in hv]
                if prev is not None:
                    rel = abs(lam - prev) / max(abs(lam), 1e-30)
                    if rel < tol:
                        break
                prev = lam
            return lam, rel, used

        lam, rel, used = power(0.0, iters)
        if lam < 0:
            # the dominant eigenvalue is negative (θ0 far from a minimum, e.g. under-fit): iterate on
            # M - lam I, whose dominant eigenvalue is λ_max - lam >= 0, to get the top (algebraic) one
            lam, rel, more = power(lam, iters)
            used += more
    finally:
        model.train(was_training)
    return Sharpness(value=lam, iters=used, rel_change=rel, subsample=len(ys), wall_s=time.perf_counter() - t0)


def adam_preconditioner(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 128,
    subsample: int = 512,
    eps: float = 1e-8,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Adam's diagonal preconditioner at θ0, 1 / (sqrt(v) + eps), with v the mean over minibatches
    (of ``batch_size``, from a seeded subsample) of the squared minibatch gradient: what Adam's second
    moment converges to if the copies started training at θ0."""
    loss_fn = loss_fn or F.cross_entropy
    idx = _subsample(len(y), subsample, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    try:
        nb = 0
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            gs = torch.autograd.grad(loss_fn(model(x[b]), y[b]), params)
            for acc, g in zip(v, gs):
                acc += g.detach() ** 2
            nb += 1
    finally:
        model.train(was_training)
    return [1.0 / ((a / nb).sqrt() + eps) for a in v]


def lr_from_sharpness(lambda_max: float, *, c: float, lr_min: float = 1e-5, lr_max: float = 1e-1) -> float:
    """The copies' learning rate c / λ_max, clipped to [lr_min, lr_max] (λ_max ≤ 0: lr_max)."""
    if not lambda_max > 0:
        return lr_max
    return float(min(max(c / lambda_max, lr_min), lr_max))
