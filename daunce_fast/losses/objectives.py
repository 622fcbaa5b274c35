"""DAUNCE perturbed-model objectives on a shared frozen output head (REFERENCE.md section 1.1).

The first-order term never needs softmax(z0) as a [rows, V] tensor. With z = h W^T + b and
z0 = h0 W^T + b, for every token row

    <z - z0, g> = (h - h0) . u,      u = W^T g   (d-sized; the bias cancels)

where g = dt/dz at z0 is the gradient of the per-example target t. :func:`base_stats`
computes u with one streaming pass over the vocabulary (online softmax of z0, then the same
tile recomputation as the backward of the loss), folded with the token weights, so FO_ik is
then a dot product of the adapter's hidden rows with u.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from . import api, ops
from .torch_launch import compute_dtype

OBJECTIVES = ("if", "efim", "margin", "blackbox")


@dataclass
class BaseStats:
    """What the objectives need from the frozen base model (no gradient), per base example.

    loss0 [M]: per-example CE at theta0; margin0 [M]: per-example margin at theta0;
    u [M*T, d]: token-weighted direction, so FO_i = sum_t h_t . u_t - fo0_i;
    fo0 [M] = sum_t h0_t . u_t; objective: which target u was built for ('if'/'efim' share the CE
    target, 'margin' uses -margin); M, T: example count and tokens per example.
    """

    loss0: torch.Tensor
    margin0: torch.Tensor
    u: torch.Tensor | None
    fo0: torch.Tensor | None
    objective: str
    M: int
    T: int
    reduction: str


def _token_weights(valid, reduction, dtype):
    w = valid.to(dtype)
    if reduction == "mean":
        w = w / valid.sum(1, keepdim=True).clamp_min(1).to(dtype)
    return w.reshape(-1)


@torch.no_grad()
def base_stats(
    hidden0,
    weight,
    labels,
    *,
    objective="if",
    bias=None,
    ignore_index=-100,
    reduction="mean",
    backend=None,
    chunk_size=None,
) -> BaseStats:
    """Precompute the base model's quantities once (reuse them across adapter chunks / steps).

    hidden0 [M, T, d] or [M, d]; labels [M, T] or [M]; weight [V, d]. For objective 'if'/'efim'
    the direction is g = softmax(z0) - onehot(y) (gradient of the token-averaged CE), for 'margin'
    g = dt/dz at z0 of t = -margin (softmax over v != y, minus onehot(y)); for 'blackbox' no
    direction is built. One forward pass plus one gradient-like pass over the vocabulary.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    api.check_head(weight, bias, hidden0.shape[-1])
    rows = api.flatten_rows(hidden0.detach(), labels, weight, ignore_index, name="hidden0")
    be = api.pick_backend("losses.base_stats", hidden0, backend, weight)
    lse_o, zy = ops.row_stats(rows.h, weight, bias, rows.y, be, chunk_size=chunk_size)
    loss0 = api.reduce_rows(api.ce_rows(lse_o, zy), rows.valid, reduction)
    margin0 = api.reduce_rows(zy - lse_o, rows.valid, reduction)
    u = fo0 = None
    if objective != "blackbox":
        tw = _token_weights(rows.valid, reduction, lse_o.dtype)
        if objective == "margin":  # t = lse_o - zy:  dt/dlse_o = 1, dt/dzy = -1
            go, gy = tw, -tw
        else:  # t = softplus(lse_o - zy): dt/dlse_o = sigmoid(lse_o - zy) = 1 - p_y
            s = torch.sigmoid(lse_o - zy) * tw
            go, gy = s, -s
        u, _, _ = ops.row_grad(rows.h, weight, bias, rows.y, lse_o, go, gy, be, need_dh=True, chunk_size=chunk_size)
        u = u.to(compute_dtype(hidden0.dtype))
        fo0 = (rows.h.to(u.dtype) * u).sum(1).view(rows.R, rows.T).sum(1)
    return BaseStats(loss0, margin0, u, fo0, objective, rows.R, rows.T, reduction)


class RowDot(torch.autograd.Function):
    """out[k, j] = h[k, j, :] . u[j, :] in u's (float32/64) precision, for h [B, J, d] of any float
    dtype and u [J, d] without gradient; in row chunks, so a half-precision h is never copied whole
    into float32 (at LLM scale hidden is gigabytes). Gradient w.r.t. h only."""

    CHUNK = 1 << 22  # elements of h per chunk

    @staticmethod
    def forward(ctx, h, u):
        B, J, d = h.shape
        out = torch.empty(B, J, dtype=u.dtype, device=h.device)
        step = max(1, RowDot.CHUNK // max(1, B * d))
        for j0 in range(0, J, step):
            j1 = min(J, j0 + step)
            out[:, j0:j1] = (h[:, j0:j1].to(u.dtype) * u[j0:j1]).sum(-1)
        ctx.save_for_backward(u)
        ctx.h_dtype = h.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        B, J = g.shape
        gh = torch.empty(B, J, u.shape[1], dtype=ctx.h_dtype, device=g.device)
        step = max(1, RowDot.CHUNK // max(1, B * u.shape[1]))
        for j0 in range(0, J, step):
            j1 = min(J, j0 + step)
            gh[:, j0:j1] = g[:, j0:j1, None] * u[j0:j1]
        return gh, None


def _masked_mean(w, cnt):
    def mean(x):
        s = (w * x).sum(1)
        return torch.where(cnt > 0, s / cnt.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))

    return mean


def daunce_objective(
    hidden,
    hidden0,
    weight,
    labels,
    weights_c,
    *,
    objective="if",
    gamma=1.0,
    num_adapters,
    mask=None,
    bias=None,
    ignore_index=-100,
    loss0=None,
    reduction="mean",
    backend=None,
    chunk_size=None,
):
    """Per-adapter DAUNCE objective gamma * R_k - FO_k and the per-example losses, streamed.

    Shapes (K = num_adapters, m examples per adapter, T tokens, d hidden, V vocabulary):
      hidden    [K*m, T, d] or [K*m, d], adapter-major (rows k*m .. k*m+m-1 belong to adapter k);
      hidden0   the frozen base's hidden states, no gradient: [m, ...] (all adapters see the same
                m examples; broadcast, never copied K times) or [K*m, ...] (each adapter its own
                examples); or a :class:`BaseStats` from :func:`base_stats`; None for 'blackbox';
      labels    [m, T] / [m] or [K*m, T] / [K*m], matching hidden0's rows (for 'blackbox'
                without hidden0: [K*m, ...] or [m, ...] broadcast); ignore_index marks padding;
      weights_c [K, m] the c_ik; mask [K, m] bool/float or None: 1 = example i in D_k (float =
                weights); R and FO average over the masked examples of each adapter (an adapter
                with an empty mask gets 0).
      loss0     optional [m] or [K*m] (or [K, m]) per-example base losses replacing l_i(theta0).
    Returns (objective [K], losses [K, m]); losses = per-example CE of each adapter (token-averaged
    for reduction='mean', the default), float32 (float64 for float64 inputs), with gradient.

    Definitions, with l_ik the per-example CE, mean_k the masked mean over i of adapter k:
      FO_ik = <z_ik - z0_i, dt_i/dz(z0_i)> summed over every position and the whole vocabulary,
              t_i the per-example target (l_i for 'if'/'efim', -m_i for 'margin'); for sequences,
              since t_i averages over valid tokens, FO_ik = (1/n_i) sum_{valid t}
              <z_ikt - z0_it, softmax(z0_it) - onehot(y_it)> (ignored tokens contribute 0).
      FO_k  = mean_k(c_ik * FO_ik)
      'if':       R_k = mean_k(l_ik) - mean_k(l0_i)
      'efim':     R_k = mean_k((l_ik - l0_i)**2)
      'margin':   R_k = mean_k((m_ik - m0_i)**2), m = z_y - logsumexp_{v != y} z_v (token-averaged);
                  the FO direction is d(-m)/dz = softmax_{v != y}(z0) - onehot(y) (REFERENCE.md's
                  loss-like margin; with mean-zero c_ik the sign does not change the scores)
      'blackbox': R_k = mean_k(l_ik), FO_k = 0 (no hidden0)
      objective_k = gamma * R_k - FO_k
    An example with no valid token has l = m = FO = 0 and still counts in the masked mean (mask it
    out to exclude it). Cost: one streaming pass over the vocabulary for the adapters' rows (plus
    the backward's recomputation), one forward + one gradient-like pass for the base rows (skip
    it by passing a BaseStats), and a d-sized dot product per row for FO.
    Differentiable w.r.t. hidden. The head (weight, bias) is treated as frozen: the FO term's
    gradient with respect to it is not implemented, so a head that requires grad raises for the
    non-blackbox objectives.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    K = int(num_adapters)
    if K < 1:
        raise ValueError(f"num_adapters must be >= 1, got {num_adapters}")
    if hidden.dim() not in (2, 3) or hidden.shape[0] % K:
        raise ValueError(
            f"hidden must be [K*m, T, d] or [K*m, d] with K={K} dividing its first dimension, "
            f"got shape {tuple(hidden.shape)}"
        )
    m = hidden.shape[0] // K
    api.check_head(weight, bias, hidden.shape[-1])
    grad_head = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
    if grad_head and objective != "blackbox":
        raise NotImplementedError(
            f"daunce_objective({objective!r}): the output head must be frozen (weight/bias without requires_grad). "
            "z0 = f(theta0) is computed here through the same head, which is only the base model's output while "
            "the head is frozen; a trainable head would need the base head passed separately (not implemented). "
            "Detach the head, or use per_example_loss (which differentiates w.r.t. the head) for blackbox-style "
            "training"
        )
    if objective != "blackbox" and (weights_c is None or tuple(weights_c.shape) != (K, m)):
        got = None if weights_c is None else tuple(weights_c.shape)
        raise ValueError(f"weights_c must be [K={K}, m={m}] (None only for 'blackbox'), got {got}")

    # Labels for the adapters' rows: [m, ...] is repeated K times (labels are small; hidden is not).
    lead = tuple(hidden.shape[1:-1])
    if labels.shape[0] == m and K > 1:
        if tuple(labels.shape[1:]) != lead:
            raise ValueError(
                f"labels must be [m, ...] or [K*m, ...] matching hidden's {tuple(hidden.shape[:-1])}, "
                f"got {tuple(labels.shape)}"
            )
        labels_k = labels.unsqueeze(0).expand(K, *labels.shape).reshape(K * m, *labels.shape[1:])
    else:
        labels_k = labels
    if tuple(labels_k.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels must be [m, ...] or [K*m, ...] matching hidden's {tuple(hidden.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )

    rows = api.flatten_rows(hidden, labels_k, weight, ignore_index)
    be = api.pick_backend("losses.daunce_objective", hidden, backend, weight)
    lse_o, zy = api.head_rows(rows, weight, bias, be, chunk_size)
    losses = api.reduce_rows(api.ce_rows(lse_o, zy), rows.valid, reduction).view(K, m)
    cd = losses.dtype

    if mask is None:
        w = torch.ones(K, m, dtype=cd, device=hidden.device)
    else:
        if tuple(mask.shape) != (K, m):
            raise ValueError(f"mask must be [K={K}, m={m}], got {tuple(mask.shape)}")
        w = mask.to(device=hidden.device, dtype=cd)
    mmean = _masked_mean(w, w.sum(1))

    if objective == "blackbox":
        return gamma * mmean(losses), losses

    if hidden0 is None:
        raise ValueError(f"objective {objective!r} needs hidden0 (or a BaseStats); only 'blackbox' runs without it")
    if isinstance(hidden0, BaseStats):
        base = hidden0
        if base.objective != objective and {base.objective, objective} != {"if", "efim"}:
            raise ValueError(f"BaseStats were built for objective {base.objective!r}, not {objective!r}")
        if base.reduction != reduction:
            raise ValueError(f"BaseStats were built with reduction={base.reduction!r}, not {reduction!r}")
    else:
        if hidden0.shape[1:] != hidden.shape[1:]:
            raise ValueError(
                f"hidden0 {tuple(hidden0.shape)} must match hidden {tuple(hidden.shape)} except in the first dimension"
            )
        base = base_stats(
            hidden0,
            weight,
            labels,
            objective=objective,
            bias=bias,
            ignore_index=ignore_index,
            reduction=reduction,
            backend=be,
            chunk_size=chunk_size,
        )
    M, T = base.M, base.T
    if M not in (m, K * m) or T != rows.T:
        raise ValueError(f"base examples must number m={m} or K*m={K * m} with T={rows.T}, got M={M}, T={T}")

    # FO_ik = sum_t h_ikt . u_it - fo0_i ; u broadcast over adapters when M == m.
    d = hidden.shape[-1]
    hk = rows.h.view(K, m * T, d) if M == m else rows.h.view(1, K * m * T, d)
    fo_rows = RowDot.apply(hk, base.u.to(hidden.device))  # [K, m*T] or [1, K*m*T]
    fo_ik = fo_rows.reshape(K, m, T).sum(2) - (base.fo0.view(1, m) if M == m else base.fo0.view(K, m))
    fo = mmean(weights_c.to(device=hidden.device, dtype=cd) * fo_ik.to(cd))

    def per_adapter(x):  # base quantities [M] -> [K, m]
        x = x.to(device=hidden.device, dtype=cd)
        return x.view(1, m).expand(K, m) if x.numel() == m else x.reshape(K, m)

    if objective in ("if", "efim"):
        l0 = base.loss0
        if loss0 is not None:
            if loss0.numel() not in (m, K * m):
                raise ValueError(f"loss0 must have m={m} or K*m={K * m} elements, got shape {tuple(loss0.shape)}")
            l0 = loss0.detach()
        l0 = per_adapter(l0)
        R = mmean(losses) - mmean(l0) if objective == "if" else mmean((losses - l0) ** 2)
    else:
        marg = api.reduce_rows(zy - lse_o, rows.valid, reduction).view(K, m)
        R = mmean((marg - per_adapter(base.margin0)) ** 2)
    return gamma * R - fo, losses
