"""Explicit-logits reference (the oracle): materialises z = h @ W.T + b and uses plain torch.

Readable, differentiable by autograd, meant for float64 checks on small shapes. Same
conventions as :mod:`daunce_fast.losses.api` (ignored tokens, examples with no valid token
give 0, margin = z_y - logsumexp of the other logits, per-example averages over valid tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits(hidden, weight, bias=None):
    z = hidden @ weight.T
    return z if bias is None else z + bias


def _tokens(x):
    """[R, d] -> [R, 1, d] view (one token per example) so every shape is [R, T, ...]."""
    return x.unsqueeze(1) if x.dim() == 2 else x


def _reduce(rows, valid, reduction):
    s = (rows * valid).sum(1)
    if reduction == "sum":
        return s
    n = valid.sum(1)
    return torch.where(n > 0, s / n.clamp_min(1), torch.zeros_like(s))


def per_example_loss(hidden, weight, labels, bias=None, ignore_index=-100, reduction="mean"):
    h = _tokens(hidden)
    y = labels.reshape(h.shape[0], -1)
    z = logits(h, weight, bias)  # [R, T, V]
    ce = F.cross_entropy(z.flatten(0, 1), y.flatten(), ignore_index=ignore_index, reduction="none").view_as(y)
    valid = (y != ignore_index).to(z.dtype)
    return _reduce(ce, valid, reduction)


def token_margin(z, y):
    """z_y - logsumexp_{v != y} z_v for every token (labels must be valid indices)."""
    zy = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    other = z.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return zy - torch.logsumexp(other, -1)


def margin(hidden, weight, labels, bias=None, ignore_index=-100, reduction="mean"):
    h = _tokens(hidden)
    y = labels.reshape(h.shape[0], -1)
    valid = y != ignore_index
    z = logits(h, weight, bias)
    m = token_margin(z, torch.where(valid, y, 0))
    return _reduce(torch.where(valid, m, 0), valid.to(z.dtype), reduction)


def _target(z, y, valid, objective, reduction):
    """Per-example target whose gradient at z0 defines the first-order term."""
    if objective == "margin":
        m = token_margin(z, torch.where(valid, y, 0))
        return -_reduce(torch.where(valid, m, 0), valid.to(z.dtype), reduction)  # loss-like: -margin
    ce = F.cross_entropy(z.flatten(0, 1), torch.where(valid, y, 0).flatten(), reduction="none").view_as(y)
    return _reduce(torch.where(valid, ce, 0), valid.to(z.dtype), reduction)


def daunce_objective(
    hidden,
    hidden0,
    weight,
    labels,
    weights_c,
    objective="if",
    gamma=1.0,
    num_adapters=1,
    mask=None,
    bias=None,
    ignore_index=-100,
    reduction="mean",
):
    """objective_k = gamma * R_k - FO_k with everything explicit; returns (objective [K], losses [K, m]).

    FO_ik = <z_ik - z0_i, dt_i/dz at z0_i> summed over all positions and the vocabulary, where t_i is
    the per-example target (token-averaged CE; -margin for 'margin'), the gradient taken by autograd.
    """
    K = num_adapters
    h = _tokens(hidden)
    km, T = h.shape[0], h.shape[1]
    m = km // K
    h = h.view(K, m, T, -1)
    yl = labels.reshape(labels.shape[0], -1)
    y = yl.view(1, m, T).expand(K, m, T) if yl.shape[0] == m else yl.view(K, m, T)
    valid = y != ignore_index
    z = logits(h, weight, bias)  # [K, m, T, V]
    V = z.shape[-1]
    ce = F.cross_entropy(z.reshape(-1, V), torch.where(valid, y, 0).reshape(-1), reduction="none").view(K, m, T)
    losses = _reduce(torch.where(valid, ce, 0).view(K * m, T), valid.view(K * m, T).to(z.dtype), reduction).view(K, m)
    w = torch.ones(K, m, dtype=z.dtype) if mask is None else mask.to(z.dtype)
    cnt = w.sum(1)

    def mmean(x):
        return torch.where(cnt > 0, (w * x).sum(1) / cnt.clamp_min(1e-300), torch.zeros_like(cnt))

    if objective == "blackbox":
        return gamma * mmean(losses), losses
    h0 = _tokens(hidden0).detach()
    M = h0.shape[0]
    y0 = yl.view(M, T)
    valid0 = y0 != ignore_index
    z0 = logits(h0, weight, bias).detach().requires_grad_(True)
    t0 = _target(z0, y0, valid0, objective, reduction)
    (g,) = torch.autograd.grad(t0.sum(), z0)  # row i of t0 depends only on z0[i]
    z0, t0 = z0.detach(), t0.detach()
    if M == m:
        z0b, gb, t0b = z0.expand(K, m, T, V), g.expand(K, m, T, V), t0.expand(K, m)
    else:
        z0b, gb, t0b = z0.view(K, m, T, V), g.view(K, m, T, V), t0.view(K, m)
    fo_ik = ((z - z0b) * gb).sum((2, 3))
    fo = mmean(weights_c.to(z.dtype) * fo_ik)
    if objective == "if":
        l0 = _target(z0, y0, valid0, "if", reduction)
        l0b = l0.expand(K, m) if M == m else l0.view(K, m)
        R = mmean(losses) - mmean(l0b)
    elif objective == "efim":
        R = mmean((losses - t0b) ** 2)
    elif objective == "margin":
        mk = _reduce(
            torch.where(valid, token_margin(z, torch.where(valid, y, 0)), 0).view(K * m, T),
            valid.view(K * m, T).to(z.dtype),
            reduction,
        ).view(K, m)
        R = mmean((mk - (-t0b)) ** 2)
    else:
        raise ValueError(f"unknown objective {objective!r}")
    return gamma * R - fo, losses
