"""The DAUNCE objective of explicit logits as one autograd node with a hand-written backward.

Same math as :func:`daunce_fast.daunce.objectives.daunce_loss` with the built-in targets (the
cross-entropy, or -margin for objective "margin") on outputs ``z [K*b, C]``; the first-order term
uses the constant ``a = (z0 * g).sum(-1)`` (precomputed with the direction, see
:func:`first_order_terms`) instead of ``z - z0``::

    FO = (c * ((z * g).sum(-1) - a).view(K, b)).mean(1)  = (c * ((z - z0) * g).sum(-1)).mean(1)

The reference is an autograd graph of ~15 small ops over [K*b, C] per step (gather, scatter,
logsumexp, softplus, the first-order product and their backward nodes: zero-filled scatters and
gathers, three [K*b, C] gradients summed). The backward here makes the same float32 operations on
the elements that are not zero in the reference, so the gradient is bit for bit the reference's
(training with Adam magnifies any rounding difference in the gradient to ~1e-4 of the recorded
losses): with ``rest = logsumexp_{c != y} z_c``, ``x = rest - z_y`` and ``g_t`` the gradient of
the per-example target,

    g_x     = softplus_backward(g_t, x)   (cross-entropy; g_t for -margin)
    dz_c    = g_x * exp(z_c - rest) + q * g_c   (c != y),   dz_y = -g_x + q * g_y
    q       = ((-grad) / b) * c
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .objectives import cross_entropy_per_example, neg_margin_per_example

TARGETS = {cross_entropy_per_example: "ce", neg_margin_per_example: "neg_margin"}
OBJECTIVES = ("if", "efim", "margin")


def first_order_terms(z0, g0, t0, c, normals=None, scale=None, sq0=None):
    """(g [R, C], a [R], t0 [R], c [R]) of rows that are examples of the chunk's models, R = K * n.

    z0, g0 [R, C], t0 [R], sq0 [R, C]: the base's tables at the rows' examples; c [K, n] weights;
    normals [K, n, C] and scale [K]: the "hessian" draws (both None for "xi").
    ``g = g0 + hessian_direction(sq0, normals, scale)`` (or g0), ``a = (z0 * g).sum(-1)``.
    Elementwise and per row only, so the rows of a step give the same values as the same rows of a
    whole chunk's table.
    """
    from .heads import hessian_direction

    g = g0
    if normals is not None:
        g = g0 + hessian_direction(sq0, normals, scale).to(g0.dtype)
    return g, (z0 * g).sum(-1), t0, c.reshape(-1)


class _FusedObjective(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, y, g, a, t0, c, K: int, objective: str, gamma: float, target: str):
        b = z.shape[0] // K
        yy = y.clamp_min(0).unsqueeze(-1)  # a negative (ignored) label reads class 0, as the reference
        zy = z.gather(1, yy).squeeze(1)
        rest = torch.logsumexp(z.scatter(1, yy, float("-inf")), dim=-1)
        x = rest - zy
        t = F.softplus(x) if target == "ce" else x
        tk = t.view(K, b)
        t0k = t0.view(K, b).to(t.dtype)
        d = None
        if objective == "if":
            reg = tk.mean(1) - t0k.mean(1)
        else:  # "efim", "margin"
            d = tk - t0k
            reg = (d**2).mean(1)
        fo = (c.view(K, b).to(z.dtype) * ((z * g).sum(1) - a).view(K, b)).mean(1)
        ctx.save_for_backward(z, yy, rest, x, d, g, c)
        ctx.meta = (K, b, objective, float(gamma), target)
        return gamma * reg - fo

    @staticmethod
    def backward(ctx, grad):
        z, yy, rest, x, d, g, c = ctx.saved_tensors
        K, b, objective, gamma, target = ctx.meta
        # every line is the reference's backward node, in its order of float operations
        g_t = (grad * gamma).unsqueeze(1).expand(K, b) / b  # MeanBackward of t.mean(1)
        if objective != "if":
            g_t = g_t * (2.0 * d)  # PowBackward of (t - t0) ** 2
        g_t = g_t.reshape(-1)
        g_x = torch.ops.aten.softplus_backward(g_t, x, 1.0, 20.0) if target == "ce" else g_t
        dz = (z - rest.unsqueeze(-1)).exp_().mul_(g_x.unsqueeze(-1))  # logsumexp's backward (c != y)
        dz.scatter_(1, yy, (-g_x).unsqueeze(-1))  # z_y's: -g_x (its logsumexp entry was -inf: 0)
        q = ((-grad).unsqueeze(1).expand(K, b) / b) * c.view(K, b).to(z.dtype)  # FO's Mean and Mul
        dz.add_(q.reshape(-1, 1) * g)
        return dz, None, None, None, None, None, None, None, None, None


def fused_objective(z, y, g, a, t0, c, *, num_models: int, objective: str, gamma: float, target: str) -> torch.Tensor:
    """Per-model objective [K] ``gamma * R_k - FO_k`` (objectives.daunce_loss) of ``z [K*b, C]``
    (adapter-major) with labels ``y [K*b]``; ``g [K*b, C]``, ``a [K*b]``, ``t0 [K*b]``, ``c [K*b]``
    from :func:`first_order_terms`; objective "if", "efim" or "margin"; target "ce" (cross-entropy)
    or "neg_margin". Gradients flow to ``z`` only."""
    if objective not in OBJECTIVES or target not in ("ce", "neg_margin"):
        raise ValueError(f"fused_objective: objective {objective!r} / target {target!r} not supported")
    if z.dim() != 2 or z.shape[0] % num_models:
        raise ValueError(f"fused_objective: z must be [K*b, C] with K={num_models}, got {tuple(z.shape)}")
    g, a, t0 = (v.to(device=z.device, dtype=z.dtype) for v in (g, a, t0))
    c = c.to(z.device)
    return _FusedObjective.apply(z, y.to(z.device), g, a, t0, c, int(num_models), objective, float(gamma), target)
