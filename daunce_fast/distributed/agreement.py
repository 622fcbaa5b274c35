"""Agreement and fault handling across ranks: a failure on one rank is reported to every rank at
the next agreement point, and a collective that fails (a dead peer, the process group's timeout)
raises DistributedError naming this rank and the cause."""

from __future__ import annotations

import contextlib
import datetime

from .group import _dist, is_distributed, rank_world


class DistributedError(RuntimeError):
    """Another rank failed, died, or did not reach a collective within the process group's timeout."""


@contextlib.contextmanager
def collective(what: str, group=None):
    """Run the collectives of the ``with`` body; a RuntimeError from them (gloo / nccl: timeout,
    connection closed by a dead peer, ...) becomes a DistributedError saying ``what`` failed."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:
        rank, world = rank_world(group)
        raise DistributedError(
            f"rank {rank} of {world}: {what}: a collective failed, so another rank died, failed outside a collective "
            f"or did not arrive within the process group's timeout (see that rank's log; rerun the job to resume "
            f"from the completed work). Cause: {type(exc).__name__}: {str(exc).strip()[:500]}"
        ) from exc


def agree(what: str, error: BaseException | None = None, group=None) -> None:
    """Collective: every rank says whether its part of ``what`` succeeded. If one failed, it
    re-raises its own ``error`` and every other rank raises DistributedError naming it."""
    rank, world = rank_world(group)
    if world == 1:
        if error is not None:
            raise error
        return
    msg = None if error is None else f"{type(error).__name__}: {error}"
    statuses: list = [None] * world
    with collective(what, group):
        _dist().all_gather_object(statuses, msg, group=group)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(statuses) if m is not None]
    if failed:
        raise DistributedError(
            f"rank {rank} of {world}: {what} failed on " + "; ".join(f"rank {r}: {m}" for r, m in failed)
        )


def run_on_all(what: str, fn, group=None):
    """``fn()`` on this rank, then :func:`agree` on the outcome (so no rank waits on a failed one)."""
    try:
        result = fn()
    except Exception as exc:
        agree(what, exc, group)
        raise
    agree(what, None, group)
    return result


def barrier(what: str = "barrier", group=None, timeout_s: float | None = None) -> None:
    """A barrier that names the missing ranks (gloo's monitored barrier) or fails with DistributedError."""
    if not is_distributed(group):
        return
    dist = _dist()
    with collective(what, group):
        if dist.get_backend(group) == "gloo" and timeout_s is not None:
            dist.monitored_barrier(group=group, timeout=datetime.timedelta(seconds=float(timeout_s)))
        else:
            dist.barrier(group=group)
