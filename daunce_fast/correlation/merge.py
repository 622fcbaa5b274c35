"""One top-k merge for every caller: the per-block and per-rank candidate lists of
daunce_fast.distributed and the public ``merge_topk`` of disjoint train shards."""

from __future__ import annotations

import torch

_INT64_MAX = torch.iinfo(torch.int64).max


def merge_candidates(values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool = True):
    """Best ``k`` of candidate lists along the last axis: values / indices [..., c] (global train
    indices; index -1 or a NaN value marks an empty slot) -> ([..., k] values, [..., k] indices),
    best first (largest values with ``largest=True``), ties to the lower index, empty slots last
    as (NaN, -1); fewer than k candidates are padded with empty slots. The candidates of disjoint
    train slices merged this way equal the top-k of the union."""
    empty = (indices < 0) | torch.isnan(values)
    key = torch.where(empty, torch.full_like(values, float("inf")), -values if largest else values)
    idx_key = torch.where(empty, torch.full_like(indices, _INT64_MAX), indices)
    o1 = torch.argsort(idx_key, dim=-1, stable=True)  # secondary key: the index
    o2 = torch.argsort(key.gather(-1, o1), dim=-1, stable=True)  # primary key: the score
    order = o1.gather(-1, o2)[..., :k]
    v, i, e = values.gather(-1, order), indices.gather(-1, order), empty.gather(-1, order)
    v = torch.where(e, torch.full_like(v, float("nan")), v)
    i = torch.where(e, torch.full_like(i, -1), i)
    if v.shape[-1] < k:  # fewer candidates than k: pad with empty slots
        pad = list(v.shape[:-1]) + [k - v.shape[-1]]
        v = torch.cat([v, torch.full(pad, float("nan"), dtype=v.dtype, device=v.device)], -1)
        i = torch.cat([i, torch.full(pad, -1, dtype=i.dtype, device=i.device)], -1)
    return v, i
