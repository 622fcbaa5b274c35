"""Public per-example losses of the output head: input checks, backend choice, reductions.

No [R, T, V] logits are ever allocated: the logits exist one tile of rows x vocabulary at a
time (torch path: ``chunk_size`` elements per tile, default 2**21; a problem that fits one
tile is computed directly; Triton path: in registers only). Gradients recompute the tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._backends import implemented, requested_backend, select_backend
from . import ops
from .torch_launch import direct_ce, direct_rows, fits_one_tile, softplus

_REDUCTIONS = ("mean", "sum")


@dataclass
class Rows:
    """Flattened view of one head call: h [N, d], y [N] (ignored -> -1), valid [R, T] bool."""

    h: torch.Tensor
    y: torch.Tensor
    valid: torch.Tensor
    R: int
    T: int


def check_head(weight, bias, d):
    if weight.dim() != 2:
        raise ValueError(f"weight must be [V, d], got shape {tuple(weight.shape)}")
    if weight.shape[1] != d:
        raise ValueError(f"weight is [V={weight.shape[0]}, d={weight.shape[1]}] but hidden has d={d}")
    if weight.shape[0] < 1:
        raise ValueError("weight has an empty vocabulary (V = 0)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V={weight.shape[0]}], got shape {tuple(bias.shape)}")


def flatten_rows(hidden, labels, weight, ignore_index, name="hidden") -> Rows:
    """Check shapes and labels; hidden [R, T, d] with labels [R, T], or [R, d] with labels [R]."""
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{name} must be [R, T, d] or [R, d], got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {hidden.dtype}")
    lead = tuple(hidden.shape[:-1])
    if tuple(labels.shape) != lead:
        raise ValueError(
            f"labels must have shape {lead} to match {name} {tuple(hidden.shape)}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.device != hidden.device:
        raise ValueError(f"labels are on {labels.device} but {name} on {hidden.device}")
    R = lead[0]
    T = lead[1] if len(lead) == 2 else 1
    y = labels.reshape(R, T).to(torch.int64)
    valid = y != ignore_index
    V = weight.shape[0]
    bad = valid & ((y < 0) | (y >= V))
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"label {int(y[idx])} at {idx} is outside [0, {V}) and is not ignore_index={ignore_index}")
    ysafe = torch.where(valid, y, torch.full_like(y, -1)).reshape(-1)
    return Rows(hidden.reshape(R * T, hidden.shape[-1]), ysafe, valid, R, T)


def pick_backend(op, hidden, backend, weight=None):
    # Unless a backend is forced: float64 (tests, references) goes to the torch path (the Triton
    # kernels take fp32/fp16/bf16; forced, the launcher raises a clear TypeError), and so does a
    # problem whose [N, V] logits fit one tile (e.g. a classifier head): plain autograd on them
    # costs a handful of calls, less than any kernel launch sequence.
    impl = implemented("losses.row_stats")  # registered in ops.py, best first
    if requested_backend(backend) is None:
        n = hidden.numel() // max(1, hidden.shape[-1])
        if hidden.dtype == torch.float64 or (weight is not None and fits_one_tile(n, weight.shape[0])):
            impl = ("torch",)
    return select_backend(op, impl, device_type=hidden.device.type, backend=backend)


def _direct(rows: Rows, weight, backend, chunk_size):
    return backend == "torch" and fits_one_tile(rows.h.shape[0], weight.shape[0], chunk_size)


def head_rows(rows: Rows, weight, bias, backend, chunk_size):
    """(lse_o, zy) per row, differentiable (the custom op ops.head_stats; direct autograd for one-tile problems)."""
    if _direct(rows, weight, backend, chunk_size):
        return direct_rows(rows.h, weight, bias, rows.y)
    return ops.row_stats(rows.h, weight, bias, rows.y, backend, chunk_size)


def reduce_rows(x, valid, reduction):
    """Per-row values [N] -> per-example [R]: mean over valid tokens (0 if none) or sum."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    x = torch.where(valid.reshape(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)).view(valid.shape)
    s = x.sum(1)
    if reduction == "sum":
        return s
    n = valid.sum(1)
    return s / n.clamp_min(1).to(s.dtype)  # n == 0 -> s == 0 -> 0


def ce_rows(lse_o, zy):
    return softplus(lse_o - zy)  # = logsumexp(z) - z_y, without cancellation when z_y dominates


def per_example_loss(
    hidden, weight, labels, *, bias=None, ignore_index=-100, reduction="mean", backend=None, chunk_size=None
):
    """Per-example cross-entropy of a linear output head, never materialising the logits.

    Semantics (as a torch expression, with z = hidden @ weight.T + bias of shape [R, T, V]):
        ce = F.cross_entropy(z.flatten(0, 1), labels.flatten(), ignore_index=ignore_index,
                             reduction="none").view(R, T)
        mean: (ce * valid).sum(1) / valid.sum(1)   (an example with no valid token gives 0)
        sum:  (ce * valid).sum(1)
    Shapes: hidden [R, T, d] with labels [R, T] (sequences), or hidden [R, d] with labels [R]
    (classifiers); weight [V, d]; bias [V] or None. Returns [R] in float32 (float64 for float64
    inputs). Differentiable w.r.t. hidden, weight and bias (whichever require grad).
    ``backend``: None (auto: triton on CUDA, torch otherwise), "triton" or "torch".
    ``chunk_size`` (torch path): elements per logits tile (int, default 2**21) or (rows, vocab).
    """
    check_head(weight, bias, hidden.shape[-1])
    rows = flatten_rows(hidden, labels, weight, ignore_index)
    be = pick_backend("losses.per_example_loss", hidden, backend, weight)
    if _direct(rows, weight, be, chunk_size):
        return reduce_rows(direct_ce(rows.h, weight, bias, rows.y), rows.valid, reduction)
    lse_o, zy = head_rows(rows, weight, bias, be, chunk_size)
    return reduce_rows(ce_rows(lse_o, zy), rows.valid, reduction)


def margin(hidden, weight, labels, *, bias=None, ignore_index=-100, reduction="mean", backend=None, chunk_size=None):
    """Per-example margin m = z_y - logsumexp_{v != y} z_v, streamed over the vocabulary.

    Same shapes, reductions and conventions as :func:`per_example_loss` (mean over valid
    tokens; 0 for an example with no valid token). Needs V >= 2 (with V = 1 the margin is +inf).
    Differentiable: dm/dz_y = 1, dm/dz_v = -softmax_{v != y}(z)_v.
    """
    check_head(weight, bias, hidden.shape[-1])
    rows = flatten_rows(hidden, labels, weight, ignore_index)
    be = pick_backend("losses.margin", hidden, backend, weight)
    lse_o, zy = head_rows(rows, weight, bias, be, chunk_size)
    return reduce_rows(zy - lse_o, rows.valid, reduction)
