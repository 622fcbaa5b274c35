"""correlate and topk sharded over the ranks of a torch.distributed process group (W ranks, this
one r; every rank calls them with the same arguments). Re-exported by daunce_fast.distributed.

  topk        rank r takes train columns share(N, r, W), computes its candidates [M, k] (global
              indices) with daunce_fast.topk, then the candidates are all_gathered and merged:
              result identical to daunce_fast.topk on the whole matrix (best first, ties to the
              lower train index, constant columns never selected). Every rank returns the full result.
  correlate   rank r computes score rows share(N, r, W) and writes them as shard r of one sharded
              store (``out=PATH.index.json``); every rank returns the read-only logical [N, M]
              ShardedArray.

Inputs are read through correlation.source.Source (the one reader of [K, n] matrices), in blocks
of BLOCK_BYTES when they are not free views; a failure on one rank reaches every rank through
daunce_fast.distributed.agreement.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from ..distributed.agreement import collective, run_on_all
from ..distributed.group import _dist, device_for, rank_world, share, split
from .api import ConstantColumnWarning, TopKResult, _warn_constants
from .api import correlate as _correlate
from .api import topk as _topk
from .merge import merge_candidates
from .options import check_k, check_options, check_tile, out_torch_dtype
from .source import Source
from .standardise import NonFiniteInputError

# Bound on what one rank reads / writes per block when an input is not a free view (a sharded or
# bfloat16 store) and on the gathered candidates: keeps memory O(block) whatever N and W are.
BLOCK_BYTES = 256 << 20


# ----------------------------------------------------------------------------------- inputs
class _Matrix(Source):
    """A [K, n] input read by column blocks: the correlation's Source (one decoding of stored
    dtypes for every entry point). Float numpy arrays / memmaps and torch tensors are sliced as
    views (``view`` True, free); sharded, decoded (bfloat16 / float16 / float8) or integer inputs
    are read block by block."""

    def __init__(self, x, name: str):
        super().__init__(x, name)
        plain = isinstance(self.data, np.ndarray) and self.data.dtype in (np.float32, np.float64)
        self.view = self.kind in ("torch", "cupy") or (plain and not self.needs_decoding)

    def cols(self, j0: int, j1: int, device=None):
        blk = self.data[:, j0:j1] if self.view else self.numpy_tile(j0, j1)
        if device is not None:
            blk = torch.as_tensor(blk).to(device)
        return blk


def _blocks(start: int, stop: int, width: int) -> list[tuple[int, int]]:
    width = max(1, int(width))
    return [(b, min(stop, b + width)) for b in range(start, stop, width)]


def _on_block(fn, b0: int, *args, **kwargs):
    """``fn(*args, **kwargs)`` (daunce_fast.topk or correlate) on the block of train columns that
    starts at b0: its ConstantColumnWarning silenced (rank 0 warns once for the whole matrix), a
    ValueError re-raised with a non-finite entry's column counted in the whole matrix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantColumnWarning)
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise _global_error(exc, b0, "train") from None


def _global_error(exc: ValueError, b0: int, name: str) -> ValueError:
    """The error of correlating block [b0, ...) of matrix ``name``, with a non-finite entry's column
    counted in the whole matrix, built from the error's fields (other errors, and the other
    matrix's, as they are). A plain ValueError: peers name the type in their DistributedError
    ("... failed on rank 1: ValueError: train has a non-finite value ..."), as documented."""
    if isinstance(exc, NonFiniteInputError) and exc.matrix == name:
        return ValueError(str(exc.at_offset(b0)))
    return exc


# ----------------------------------------------------------------------------------- top-k merge
def _gather_merge(values, indices, k, largest, group):
    """all_gather every rank's [M, k] candidates (in blocks of test columns, so W x block stays
    under BLOCK_BYTES) and merge them: [M, k] on every rank."""
    dist = _dist()
    _, world = rank_world(group)
    dev = device_for(group)
    M = values.shape[0]
    rows = max(1, BLOCK_BYTES // max(1, world * k * 12))
    out_v, out_i = torch.empty_like(values), torch.empty_like(indices)
    for m0, m1 in _blocks(0, M, rows):
        v, i = values[m0:m1].contiguous().to(dev), indices[m0:m1].contiguous().to(dev)
        gv, gi = [torch.empty_like(v) for _ in range(world)], [torch.empty_like(i) for _ in range(world)]
        with collective("topk: gathering candidates", group):
            dist.all_gather(gv, v, group=group)
            dist.all_gather(gi, i, group=group)
        mv, mi = merge_candidates(torch.cat(gv, -1), torch.cat(gi, -1), k, largest)
        out_v[m0:m1], out_i[m0:m1] = mv.cpu(), mi.cpu()
    return out_v, out_i


def _all_concat(arr: np.ndarray, group) -> np.ndarray:
    rank, world = rank_world(group)
    if world == 1:
        return arr
    parts: list = [None] * world
    with collective("gathering constant columns", group):
        _dist().all_gather_object(parts, arr, group=group)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def _test_matrix(te, device):
    """The whole test matrix [K, M], read once (every rank needs all of it)."""
    if not te.view or te.device.type == "cpu":
        from ..storage.memory import check_fits_in_memory

        check_fits_in_memory(8 * te.K * te.n, f"{te.name} matrix [{te.K}, {te.n}] (loaded whole on every rank)")
    t = te.cols(0, te.n, device)
    return t if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)


def _output_kind(*mats):
    for m in mats:
        if m.kind == "torch":
            return m.data.device
    return None


# ----------------------------------------------------------------------------------- topk
def topk(
    train,
    test,
    k: int,
    *,
    method: str = "pearson",
    largest: bool = True,
    backend: str | None = None,
    group=None,
    nan_policy: str = "raise",
    precision: str | None = None,
    tile: int | None = None,
    device=None,
):
    """:func:`daunce_fast.topk` over the ranks of ``group``: rank r scores train columns
    ``share(N, r, W)`` and the [M, k] candidate lists are all_gathered and merged (see
    correlation.merge.merge_candidates). Every rank must call it with the same arguments; every
    rank gets the full ``TopKResult(values [M, k] float32, indices [M, k] int64)`` with ``constant_train`` /
    ``constant_test``. Outside a process group (or with one rank) it is daunce_fast.topk.

    train [K, N] / test [K, M]: numpy arrays or memmaps, torch tensors, storage readers, sharded
    arrays or paths (a sharded store is read in column blocks: a rank never holds more than its
    share, in blocks of BLOCK_BYTES). device: move the blocks there (e.g. this rank's GPU) before
    scoring. Results: torch tensors when an input is one, else numpy (like daunce_fast.topk).
    """
    rank, world = rank_world(group)
    check_tile(tile)
    opts = dict(method=method, backend=backend, nan_policy=nan_policy, precision=precision, tile=tile)
    tr, te = _Matrix(train, "train"), _Matrix(test, "test")
    try:
        if tr.K != te.K:
            raise ValueError(f"train and test must have the same number of models K (rows): {tr.K} vs {te.K}")
        k = check_k(k, tr.n)
        out_dev = _output_kind(tr, te)
        n0, n1 = share(tr.n, rank, world)

        def local():
            test_blk = _test_matrix(te, device)
            vals = torch.full((te.n, k), float("nan"), dtype=torch.float32)
            idx = torch.full((te.n, k), -1, dtype=torch.int64)
            consts, const_test = [], None
            width = (n1 - n0) if tr.view else BLOCK_BYTES // (8 * tr.K)
            spans = _blocks(n0, n1, width) or [(n0, n0)]
            for b0, b1 in spans:
                if b1 == b0 and const_test is not None:
                    continue
                blk = tr.cols(b0, b1, device)
                res = _on_block(_topk, b0, blk, test_blk, min(k, b1 - b0), largest=largest, **opts)
                v = torch.as_tensor(res.values).float().cpu()
                i = torch.as_tensor(res.indices).cpu()
                i = torch.where(i >= 0, i + b0, i)
                vals, idx = merge_candidates(torch.cat([vals, v], -1), torch.cat([idx, i], -1), k, largest)
                consts.append(res.constant_train + b0)
                const_test = res.constant_test
            return vals, idx, np.concatenate(consts).astype(np.int64), const_test

        vals, idx, const_train, const_test = (
            run_on_all("topk: local candidates", local, group) if world > 1 else local()
        )
        if world > 1 and te.n and k:
            vals, idx = _gather_merge(vals, idx, k, largest, group)
        const_train = _all_concat(const_train, group)
    finally:
        tr.close()
        te.close()
    if rank == 0:
        _warn_constants(method, const_train, const_test, stacklevel=3)
    if out_dev is not None:
        vals, idx = vals.to(out_dev), idx.to(out_dev)
    else:
        vals, idx = vals.numpy(), idx.numpy()
    return TopKResult(vals, idx, const_train, const_test)


# ----------------------------------------------------------------------------------- correlate
class RowSlab(tuple):
    """``(start, stop, scores)``: this rank's rows [start, stop) of the [N, M] score matrix."""

    def __new__(cls, start, stop, scores):
        return super().__new__(cls, (start, stop, scores))

    start = property(lambda self: self[0])
    stop = property(lambda self: self[1])
    scores = property(lambda self: self[2])


def correlate(
    train,
    test,
    *,
    method: str = "pearson",
    out=None,
    out_dtype="float32",
    backend: str | None = None,
    group=None,
    nan_policy: str = "raise",
    precision: str | None = None,
    tile: int | None = None,
    resume: bool = True,
):
    """:func:`daunce_fast.correlate` over the ranks of ``group``: rank r computes score rows
    ``share(N, r, W)`` (its train columns) against all M test columns.

    out=PATH (an index path, e.g. ``scores.index.json``): rank r writes shard r of one sharded
    store (tensor ``scores``, logical [N, M], axis 0; files ``scores-0000r-of-0000W.safetensors``
    beside the index), journaled per block of rows so an interrupted job resumes (``resume=True``)
    when everything that determines the scores matches (both matrices in full by content
    fingerprint, method, out_dtype, backend / precision, format version; else ResumeMismatchError
    naming what differs; ``resume=False`` starts afresh);
    after every rank finished, each returns the read-only logical ShardedArray (read it by slices).
    out=None: returns this rank's :class:`RowSlab` ``(start, stop, scores [stop - start, M])``
    (numpy, or torch when an input is a torch tensor) -- no rank ever holds the whole [N, M].
    Other arguments as in daunce_fast.correlate; every rank must pass the same ones.
    """
    from .. import storage

    rank, world = rank_world(group)
    check_tile(tile)
    opts = dict(method=method, backend=backend, nan_policy=nan_policy, precision=precision, tile=tile)
    tr, te = _Matrix(train, "train"), _Matrix(test, "test")
    odt = out_torch_dtype(out_dtype)
    try:
        if tr.K != te.K:
            raise ValueError(f"train and test must have the same number of models K (rows): {tr.K} vs {te.K}")
        N, M, K = tr.n, te.n, tr.K
        n0, n1 = share(N, rank, world)
        osize = torch.empty((), dtype=odt).element_size()
        width = max(1, BLOCK_BYTES // max(1, M * osize))
        if not tr.view:
            width = min(width, BLOCK_BYTES // (8 * K))
        if out is None:
            width = max(width, n1 - n0) if tr.view else width
        test_blk = _test_matrix(te, None)

        def run(target, writer):
            for b0, b1 in _blocks(n0, n1, width):
                key = f"{b0}:{b1}"
                if writer is not None and writer.is_done(key):
                    continue
                _on_block(_correlate, b0, tr.cols(b0, b1), test_blk, out=target[b0 - n0 : b1 - n0], **opts)
                if writer is not None:
                    writer.mark_done(key)

        if out is None:

            def local():
                if _output_kind(tr, te) is not None:
                    target = torch.empty((n1 - n0, M), dtype=odt, device=_output_kind(tr, te))
                    run(target, None)
                    return target
                if odt == torch.bfloat16:
                    raise ValueError(
                        "out_dtype='bfloat16' cannot be returned as a numpy array; pass torch tensors or out=PATH"
                    )
                target = torch.empty((n1 - n0, M), dtype=odt)
                run(target, None)
                return target.numpy()

            slab = run_on_all("correlate", local, group) if world > 1 else local()
            return RowSlab(n0, n1, slab)

        index_path = os.fspath(out)
        meta = _resume_metadata(tr, te, method, str(odt).replace("torch.", ""), backend, precision)

        def local():
            from ._resume import mismatch_error

            try:
                sw = storage.create_sharded(
                    index_path,
                    "scores",
                    (N, M),
                    str(odt).replace("torch.", ""),
                    axis=0,
                    shard_sizes=split(N, world),
                    metadata=meta,
                    overwrite=not resume,
                )
            except storage.LayoutMismatchError as exc:
                raise mismatch_error(exc, index_path, meta, sharded=True) from None
            if resume and os.path.exists(sw.shard_files[rank]):
                return  # this rank's shard completed in an earlier run
            try:
                w = sw.create_shard(rank, resume=resume)
            except storage.LayoutMismatchError as exc:
                raise mismatch_error(exc, sw.shard_files[rank], meta) from None
            try:
                run(w.torch("scores"), w)
                w.close()
            except ValueError:
                w.abort(keep=False)  # bad input: nothing to resume
                raise
            except BaseException:
                w.abort(keep=True)  # interrupted: the partial shard and its journal stay for a rerun
                raise

        run_on_all("correlate: writing row slabs", local, group) if world > 1 else local()
    finally:
        tr.close()
        te.close()
    return storage.open_sharded(index_path)


def _resume_metadata(tr, te, method: str, out_dtype: str, backend, precision) -> dict:
    """The score store's identity (correlation._resume.resume_metadata), with the backend that
    daunce_fast.correlate will pick for the blocks (they live where the inputs live)."""
    from .._backends import implemented, select_backend
    from ._resume import effective_precision, resume_metadata
    from .engines import ENGINE_OP

    dev = "cuda" if any(m.device.type == "cuda" for m in (tr, te)) else "cpu"
    chosen = select_backend("correlate", implemented(ENGINE_OP), dev, backend)
    prec = effective_precision(chosen, check_options(method, "raise", precision), dev, out_dtype)
    return resume_metadata(tr, te, method=method, out_dtype=out_dtype, backend=chosen, precision=prec)


__all__ = ["topk", "correlate", "RowSlab", "BLOCK_BYTES"]
