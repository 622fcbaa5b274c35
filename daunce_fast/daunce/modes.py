"""Train/eval modes that keep the K copies independent while they train and while they are recorded
(docs/pipeline.md#batchnorm, docs/pipeline.md#dropout).

Inputs are adapter-major (rows [k*m, (k+1)*m) belong to copy k). A BatchNorm in train mode would
normalise with statistics over all K*m rows, mixing the copies, and would update the running
statistics. Here:

- training, ``dropout=False`` (default): the whole model is in eval mode (dropout off, BatchNorm
  with θ0's running statistics), so at learning rate 0 every copy computes θ0's outputs exactly;
- training, ``dropout=True``: the model is in train mode (its dropout active), BatchNorm as below;
- BatchNorm ``"eval"``: θ0's running statistics; ``"batch"``: each copy's own batch statistics
  (over its m rows and the spatial positions), in training only; running statistics are never
  updated in either mode;
- recording: eval mode, BatchNorm with θ0's running statistics.

A BatchNorm without running statistics (``track_running_stats=False``) always uses per-copy batch
statistics.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _batchnorms_and_owners(model: nn.Module, copy_layer: type) -> list[tuple[Any, Any]]:
    """(BatchNorm, innermost copy layer around it or None) for every BatchNorm of ``model``."""
    out: list[tuple[Any, Any]] = []

    def visit(mod: nn.Module, owner) -> None:
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            out.append((mod, owner))
        if isinstance(mod, copy_layer):
            owner = mod
        for child in mod.children():
            visit(child, owner)

    visit(model, None)
    return out


def per_copy_batchnorm(bn: nn.modules.batchnorm._BatchNorm, num_copies: int):
    """A forward for ``bn`` that normalises each copy's rows with their own batch statistics
    (biased variance, as BatchNorm in train mode) and never touches the running statistics."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        K = num_copies
        if x.shape[0] % K:
            raise ValueError(f"BatchNorm: input {tuple(x.shape)} must hold {K} adapter-major copies along dimension 0")
        xs = x.reshape(K, x.shape[0] // K, *x.shape[1:]).transpose(1, 2)  # [K, C, m, ...]
        # per copy: [m, C, *S] -> F.batch_norm over a batch of K "images" with K*C channels
        y = F.batch_norm(xs.reshape(1, K * x.shape[1], -1), None, None, training=True, eps=bn.eps)
        y = y.reshape(xs.shape).transpose(1, 2).reshape(x.shape)
        if bn.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y

    return forward


@contextlib.contextmanager
def copy_modes(model: nn.Module, num_copies: int, *, batchnorm: str, dropout: bool, training: bool):
    """Put ``model`` (carrying ``num_copies`` copies) in the modes of the module docstring for a
    training forward (``training=True``) or for recording; restore every module's mode and forward
    on exit."""
    from ..lora import CopyLayer, MultiCopyNorm

    modes = {m: m.training for m in model.modules()}
    patched = []
    per_copy = training and batchnorm == "batch"
    try:
        model.train(training and dropout)
        for bn, owner in _batchnorms_and_owners(model, CopyLayer):
            if isinstance(owner, MultiCopyNorm) and owner.base is bn:
                # the copy layer normalises per copy; its base's flag selects batch statistics
                owner.batchnorm = batchnorm
                bn.train(per_copy)
                continue
            bn.eval()  # never update the running statistics, never mix copies
            if not bn.track_running_stats or per_copy:
                # inside another copy layer (the torch.func fallback maps over the copies) the
                # module sees one copy's rows at a time
                bn.forward = per_copy_batchnorm(bn, 1 if owner is not None else num_copies)
                patched.append(bn)
        yield model
    finally:
        for bn in patched:
            del bn.forward  # back to the class's forward
        for m, t in modes.items():
            m.training = t
