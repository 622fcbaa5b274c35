"""torch.library custom ops over correlate / topk (torch tensors in and out), with fake
implementations, so torch.compile and tracing tools can use them without graph breaks.

  torch.ops.daunce_fast.corr_topk(train, test, k, method, largest) -> (values [M, k] f32, indices [M, k] i64)
  torch.ops.daunce_fast.correlate(train, test, method) -> scores [N, M] f32
Backend choice as in the Python functions (backend=None: the best live one for the device),
through the same registry path.

The engines behind them are registered per backend in engines.py.
"""

from __future__ import annotations

import torch

from .api import correlate, topk


@torch.library.custom_op("daunce_fast::corr_topk", mutates_args=())
def corr_topk(
    train: torch.Tensor, test: torch.Tensor, k: int, method: str = "pearson", largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    v, i = topk(train, test, k, method=method, largest=largest)
    return v.clone(), i.clone()


@corr_topk.register_fake
def _(train, test, k, method="pearson", largest=True):
    M = test.shape[1]
    return (train.new_empty((M, k), dtype=torch.float32), train.new_empty((M, k), dtype=torch.int64))


@torch.library.custom_op("daunce_fast::correlate", mutates_args=())
def corr_full(train: torch.Tensor, test: torch.Tensor, method: str = "pearson") -> torch.Tensor:
    return correlate(train, test, method=method).clone()


@corr_full.register_fake
def _(train, test, method="pearson"):
    return train.new_empty((train.shape[1], test.shape[1]), dtype=torch.float32)
