"""The process group: initialisation from the launcher's environment (torchrun, SLURM), this
rank's place in it, and how work is split over ranks.

torch.distributed is imported on first use, not when this module is.
"""

from __future__ import annotations

import datetime
import os

import torch

from ..storage.sharded import even_split

DEFAULT_TIMEOUT_S = 1800.0


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """True when torch.distributed is available and its default process group is initialised."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank_world(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (default: the default group); (0, 1) outside torch.distributed."""
    if not is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def is_distributed(group=None) -> bool:
    """True when a process group with more than one rank is live (what Daunce checks)."""
    return rank_world(group)[1] > 1


def init_from_env(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Initialise the default process group from the launcher's environment; returns (rank, world).

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. Under SLURM (srun, one
    task per GPU) RANK / WORLD_SIZE / LOCAL_RANK default to SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID; MASTER_ADDR must be exported by the batch script (first host of the job) and
    MASTER_PORT defaults to 29500. backend: None -> "nccl" when CUDA is available (and the
    process's GPU is set to LOCAL_RANK), else "gloo". timeout_s bounds every collective: a dead
    or stuck rank makes its peers fail after at most this long. Already initialised: a no-op.
    """
    dist = _dist()
    if dist.is_initialized():
        return rank_world()
    env = os.environ
    for ours, slurm in (("RANK", "SLURM_PROCID"), ("WORLD_SIZE", "SLURM_NTASKS"), ("LOCAL_RANK", "SLURM_LOCALID")):
        if ours not in env and slurm in env:
            env[ours] = env[slurm]
    if "SLURM_PROCID" in env:
        env.setdefault("MASTER_PORT", "29500")
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in env]
    if missing:
        raise RuntimeError(
            f"init_from_env: {', '.join(missing)} not set; launch with torchrun (or srun with "
            "MASTER_ADDR exported), see docs/distributed.md"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    return rank_world()


def shutdown() -> None:
    """Destroy the default process group (if any)."""
    if is_initialized():
        _dist().destroy_process_group()


def device_for(group=None) -> torch.device:
    """Where collective buffers must live: the current CUDA device for nccl, else CPU."""
    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------------- splits
def split(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous pieces of ``n`` items, as even as possible (first ones larger):
    storage.sharded.even_split, so rank r's piece is shard r of a store sharded the default way."""
    return even_split(n, parts)


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous piece of ``n`` items (see :func:`split`)."""
    sizes = split(n, world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]
