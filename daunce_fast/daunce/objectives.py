"""The DAUNCE perturbed objective in output space, for any model output and target function.

For model k and its minibatch rows i (adapter-major: rows [k*b, (k+1)*b) belong to model k):

    t_i  = target(z_i, y_i)                 per-example loss (or -margin for objective "margin",
                                            loss-like as in daunce_fast.losses)
    g_i  = d target(z, y_i) / dz at z0_i    detached (for cross-entropy: softmax(z0_i) - onehot(y_i))
    FO_k = mean_i c_ik * <z_i - z0_i, g_i>  (inner product over every output coordinate)
    R_k  = mean_i t_i - mean_i t0_i          "if"
         = mean_i (t_i - t0_i)^2             "efim", "margin"
         = mean_i t_i                        "blackbox" (plain subset ERM; FO = 0, no z0 needed)
    objective_k = gamma * R_k - FO_k

This explicit-output form suits classifiers (a few logits per example) and custom losses (g is
taken by autograd). Language models use daunce_fast.losses, which never materialises logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _label_and_rest(z: torch.Tensor, y: torch.Tensor):
    """(z_y, logsumexp of the other logits) per row; ignored labels read class 0 (masked later)."""
    yy = y.clamp_min(0).unsqueeze(-1)
    zy = z.gather(-1, yy).squeeze(-1)
    rest = torch.logsumexp(z.scatter(-1, yy, float("-inf")), dim=-1)
    return zy, rest


def _token_mean(x: torch.Tensor, y: torch.Tensor, ignore_index: int) -> torch.Tensor:
    valid = (y != ignore_index).to(x.dtype)
    return (x * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)


def cross_entropy_per_example(z: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """[B, C] logits, [B] labels -> [B]; or [B, T, V], [B, T] -> token-averaged [B] (0 if no valid token).

    Computed as softplus(logsumexp_{c != y} z_c - z_y), which equals logsumexp(z) - z_y but keeps
    full relative precision for confident examples: the plain form rounds every loss below about
    6e-8 to exactly 0 in float32, which turns those examples into constant columns across models.
    """
    zy, rest = _label_and_rest(z, y)
    tok = F.softplus(rest - zy)
    return tok if z.dim() == 2 else _token_mean(tok, y, ignore_index)


def margin_per_example(z: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """z_y - logsumexp of the other logits; [B, C] -> [B], or token-averaged for [B, T, V]."""
    zy, rest = _label_and_rest(z, y)
    m = zy - rest
    return m if z.dim() == 2 else _token_mean(m, y, ignore_index)


def neg_margin_per_example(z: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """-margin: the loss-like target of objective "margin" (lower = better, like the loss)."""
    return -margin_per_example(z, y, ignore_index)


def base_terms(z0: torch.Tensor, y: torch.Tensor, target_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(t0 [B], g0 like z0) of the frozen base: target values and their gradients w.r.t. z at z0."""
    with torch.enable_grad():
        zz = z0.detach().clone().requires_grad_(True)
        t0 = target_fn(zz, y)
        (g0,) = torch.autograd.grad(t0.sum(), zz)
    return t0.detach(), g0.detach()


def daunce_loss(z, y, c, *, num_models: int, objective: str, gamma: float, target_fn, z0=None, t0=None, g0=None):
    """Per-model objective [K] and per-example targets [K, b] (detached).

    z: [K*b, ...] outputs of the K models (adapter-major); y: labels [K*b, ...]; c: [K, b] weights;
    z0, t0, g0: the base's outputs, targets and target gradients for the same rows (z0 and g0
    like z, t0 [K*b]); not needed for "blackbox".
    """
    K = num_models
    t = target_fn(z, y).view(K, -1)
    if objective == "blackbox":
        return gamma * t.mean(1), t.detach()
    t0 = t0.view(K, -1).to(t.dtype)
    if objective == "if":
        reg = t.mean(1) - t0.mean(1)
    elif objective in ("efim", "margin"):
        reg = ((t - t0) ** 2).mean(1)
    else:
        raise ValueError(f"unknown objective {objective!r}")
    fo_rows = ((z - z0) * g0).flatten(1).sum(1).view(K, -1)
    fo = (c.to(fo_rows.dtype) * fo_rows).mean(1)
    return gamma * reg - fo, t.detach()
