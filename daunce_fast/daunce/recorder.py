"""Record per-example targets of every example under each model of a chunk, in one batched pass
per block of examples (the same examples repeated for the K_c adapters, adapter-major)."""
from __future__ import annotations

import numpy as np
import torch

from .data import repeat_for_models


@torch.no_grad()
def record_chunk(model, examples, num_models: int, *, forward, target_fn, sign: float, row_budget: int) -> np.ndarray:
    """Targets [K_c, N] float32: sign * target_fn(outputs of model k on example j, label j)."""
    n = len(examples)
    out = np.empty((num_models, n), dtype=np.float32)
    block = max(1, row_budget // num_models)
    device = next(model.parameters()).device
    model.eval()
    for j0 in range(0, n, block):
        idx = torch.arange(j0, min(n, j0 + block))
        inputs, y = examples.take(idx, device)
        z = forward(model, repeat_for_models(inputs, num_models))
        t = target_fn(z, repeat_for_models((y,), num_models)[0]).view(num_models, -1)
        out[:, j0:j0 + len(idx)] = (sign * t).float().cpu().numpy()
    return out


@torch.no_grad()
def base_outputs(model, examples, *, forward, row_budget: int) -> torch.Tensor:
    """Outputs of the frozen base model (no adapters) over all examples, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    for j0 in range(0, len(examples), row_budget):
        inputs, _ = examples.take(torch.arange(j0, min(len(examples), j0 + row_budget)), device)
        outs.append(forward(model, inputs).float().cpu())
    model.train(was_training)
    return torch.cat(outs)
