"""Record per-example targets of every example under each model of a chunk, in one batched pass
per block of examples (the same examples repeated for the K_c adapters, adapter-major)."""

from __future__ import annotations

import numpy as np
import torch

from ..lora.copies import expected_rows
from .modes import copy_modes


@torch.no_grad()
def record_chunk(model, examples, num_models: int, head, *, row_budget: int) -> np.ndarray:
    """Targets [K_c, N] float32 (lower = better): the head's target of example j under model k,
    the model in eval mode with θ0's BatchNorm running statistics (modes.copy_modes)."""
    n = len(examples)
    out = np.empty((num_models, n), dtype=np.float32)
    per_example = int(np.prod(examples.labels.shape[1:])) if examples.labels.dim() > 1 else 1
    block = max(1, row_budget // (num_models * per_example))
    device = next(model.parameters()).device
    cfg = head.cfg
    with copy_modes(model, num_models, batchnorm=cfg.batchnorm, dropout=cfg.dropout, training=False):
        for j0 in range(0, n, block):
            idx = torch.arange(j0, min(n, j0 + block))
            inputs, y = examples.take(idx, device)
            with expected_rows(num_models * len(idx)):  # the examples repeated for the K_c copies
                out[:, j0 : j0 + len(idx)] = head.record(model, inputs, y, num_models).float().cpu().numpy()
    return out
