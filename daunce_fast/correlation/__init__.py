"""Streaming tiled correlation of loss matrices: ``correlate`` (full [N, M] scores, in memory or
streamed to a safetensors file) and ``topk`` (k best train examples per test example, memory
O(tile + M k)); ``merge_topk`` merges results of disjoint train shards.
Backends: torch (float64 reference), cpu (compiled selection), triton, cuda.

Importing this package is cheap: no triton, no compiled extension, no CUDA call.
"""

from . import ops  # noqa: F401 - registers torch.ops.daunce_fast.corr_topk / .correlate (custom ops with fake impls)
from .api import ConstantColumnWarning, TopKResult, correlate, merge_topk, topk

__all__ = ["correlate", "topk", "merge_topk", "TopKResult", "ConstantColumnWarning"]
