"""DAUNCE across processes (GPUs, nodes) with torch.distributed: launched by torchrun or SLURM,
gloo on CPU, nccl on GPU. See docs/distributed.md for the launch recipes and the file layout.

  group         init_from_env, shutdown, is_initialized, rank_world, is_distributed, split, share
  agreement     agree, run_on_all, barrier, DistributedError (fault handling)

How the work is split (W ranks, this one r; every rank calls the same functions with the same
arguments):

  Daunce.fit / record   the K models are cut into chunks; rank r trains and records a contiguous
                        range of chunks and writes its own shard (its rows of models) of each
                        loss store; ``losses/<name>.index.json`` presents one logical [K, N].
                        (daunce_fast.daunce.pipeline does this when a process group is live.)
  topk, correlate       the rank-sharded correlation, daunce_fast.correlation.sharded (re-exported
                        here): rank r scores train columns share(N, r, W); top-k candidates are
                        all_gathered and merged, full scores are written as shard r of one store.

Faults: every collective runs under the process group's timeout (``init_from_env(timeout_s=)``);
an exception on one rank is reported to all at the next agreement point (each peer raises
DistributedError naming the failing rank and its error); a rank that dies makes its peers' next
collective fail (connection closed, or the timeout) with DistributedError. Work that completed
(adapter chunks, loss-store chunks, score blocks) is journaled on disk, so rerunning the same job
resumes from it.

Importing this package is cheap (torch.distributed is imported on first use; the correlation
names are resolved on first use).
"""

from __future__ import annotations

from .._lazy import lazy_names
from .agreement import DistributedError, agree, barrier, run_on_all
from .group import DEFAULT_TIMEOUT_S, init_from_env, is_distributed, is_initialized, rank_world, share, shutdown, split

# names of the rank-sharded correlation, resolved on first use: correlation.sharded imports this
# package's modules, so importing it here would be a cycle
_LAZY = {
    "topk": ("..correlation.sharded", "topk"),
    "correlate": ("..correlation.sharded", "correlate"),
    "RowSlab": ("..correlation.sharded", "RowSlab"),
    "BLOCK_BYTES": ("..correlation.sharded", "BLOCK_BYTES"),
    "merge_topk": ("..correlation.merge", "merge_candidates"),
}

__all__ = [
    "init_from_env",
    "shutdown",
    "is_initialized",
    "is_distributed",
    "rank_world",
    "split",
    "share",
    "agree",
    "run_on_all",
    "barrier",
    "DistributedError",
    "DEFAULT_TIMEOUT_S",
    *_LAZY,
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
