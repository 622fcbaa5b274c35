"""Public entry points: correlate() and topk(). They check the inputs once, pick a backend, and
drive its engine over column tiles of the train matrix (the test matrix is standardised once).

Semantics (train A [K, N], test B [K, M]; row = model, column = example):
  centre every column in float64 (two-pass mean), then
  pearson:    scores = clip((Ac / |Ac|).T @ (Bc / |Bc|), -1, 1)          [N, M]
  covariance: scores = Ac.T @ Bc / (K - 1)                               [N, M]
Positive = the training example helped the test example (the sign of DAUNCE / TRAK / dattri).

Constant columns (std below float64 rounding of the mean, see reference.is_constant): every
pearson score they touch is NaN in full mode, and top-k never selects them (a test column with
fewer than k selectable train examples gets NaN / -1 in the remaining slots). Their indices are
reported by a ConstantColumnWarning and, for topk, in ``result.constant_train`` /
``result.constant_test``. In covariance mode they are well defined (score 0) and selectable.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch

from .._backends import implemented, kernel, select_backend
from ._resume import effective_precision, mismatch_error, resume_metadata
from .engines import ENGINE_OP as _ENGINES
from .merge import merge_candidates
from .options import check_k, check_options, out_torch_dtype
from .source import Source, check_pair
from .standardise import nonfinite_error, overflow_error

_MARK_EVERY = 1 << 30  # out=PATH: make written tiles durable (fsync + journal) every this many bytes
_WRITE_BYTES = 64 << 20  # out=PATH: rows computed into a reusable host buffer, then pwrite()n, per step
_WRITE_BUFFERS = 2  # out=PATH: host buffers in rotation (the product fills one while the others are written)
# out=PATH: bytes per pwrite call, each followed (durable writers, Linux) by sync_file_range(WRITE):
# the disk starts on every piece as soon as it is in the page cache instead of when the next fsync
# comes, so the disk works while the product runs and the fsyncs find little left to do.
_WRITE_CALL_BYTES = 4 << 20  # measured 1.4-1.6x faster than 16 and 64 MiB here (bench/results/cpu_misses.md)
_EARLY_WRITEBACK = True  # False: no sync_file_range (the fsyncs write everything); for the benchmark
_MARK_IN_WRITER = True  # False: the calling thread drains and marks (waits for the fsync); for the benchmark

# out=PATH: where the last call's time went (seconds; read by bench/ops/bench_cpu_misses.py).
# compute: the product in the calling thread; wait_buffer: the calling thread waiting for a free
# buffer (the writer is behind); clip, pwrite, sync_range, mark: the writer thread's own work
# (mark = fsync + journal append); close: the final drain, header rewrite, fsync and rename.
last_write_stats: dict = {}


def _sync_file_range():
    """libc sync_file_range (Linux), or None: starts writeback of a byte range without waiting."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2


class _FileRows:
    """Writes row blocks of the file's [N, M] tensor with pwrite() through the map's file and
    offset (np.memmap.filename / .offset), from rotating host buffers and one writer thread, so
    the product of the next rows overlaps the write of the previous ones. No page faults inside
    the product either (stores into a fresh shared file map fault once per page). Durability
    (fsync + journal, ``mark``) also runs in the writer thread, after the writes queued before it
    (one worker: first in, first out), so the product never waits for the disk's flush."""

    def __init__(self, mm, rows: int, M: int, dtype: torch.dtype, clip: bool, writer=None):
        from concurrent.futures import ThreadPoolExecutor

        self.fd = os.open(mm.filename, os.O_WRONLY)
        self.bufs = [torch.empty((rows, M), dtype=dtype) for _ in range(max(2, _WRITE_BUFFERS))]
        self.futs: list = [None] * len(self.bufs)
        self.marks: list = []
        self.turn = 0
        self.clip = clip  # pearson: clip to [-1, 1] here, in the writer thread, off the product's path
        self.base, self.row_bytes = int(mm.offset), M * self.bufs[0].element_size()
        self.writer = writer
        durable = writer is not None and getattr(writer, "durable", False)
        self.sfr = _sync_file_range() if durable and _EARLY_WRITEBACK else None
        self.stats = {"compute": 0.0, "wait_buffer": 0.0, "clip": 0.0, "pwrite": 0.0, "sync_range": 0.0, "mark": 0.0}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daunce_fast-write")

    @property
    def rows(self) -> int:
        return self.bufs[0].shape[0]

    def buffer(self, n: int) -> torch.Tensor:
        """The next free host buffer (waits for its previous write)."""
        fut = self.futs[self.turn]
        if fut is not None:
            self.futs[self.turn] = None
            t0 = time.perf_counter()
            fut.result()
            self.stats["wait_buffer"] += time.perf_counter() - t0
        self._check_marks()
        return self.bufs[self.turn][:n]

    def submit(self, row0: int, block: torch.Tensor) -> None:
        """Write ``block`` (the buffer just returned by buffer()) at row ``row0``, in the background."""
        self.futs[self.turn] = self.pool.submit(self._write, row0, block)
        self.turn = (self.turn + 1) % len(self.bufs)

    def mark(self, keys: list) -> None:
        """Journal ``keys`` (writer.mark_done: fsync, then the journal) once every block submitted
        before this call is in the file: queued behind those writes in the writer thread."""
        self.marks.append(self.pool.submit(self._mark, list(keys)))

    def _mark(self, keys: list) -> None:
        t0 = time.perf_counter()
        self.writer.mark_done(*keys)
        self.stats["mark"] += time.perf_counter() - t0

    def _check_marks(self) -> None:
        while self.marks and self.marks[0].done():
            self.marks.pop(0).result()  # raises the writer thread's error here

    def _write(self, row0: int, block: torch.Tensor) -> None:
        t0 = time.perf_counter()
        if self.clip:
            if block.dtype == torch.bfloat16:
                block.clamp_(-1.0, 1.0)
            else:
                a = block.numpy()
                np.clip(a, -1.0, 1.0, out=a)  # single-threaded, releases the GIL; keeps NaN
        if block.dtype == torch.bfloat16:
            block = block.view(torch.int16)
        t1 = time.perf_counter()
        self.stats["clip"] += t1 - t0
        view = memoryview(block.numpy()).cast("B")
        pos = self.base + row0 * self.row_bytes
        sync_s = 0.0
        while len(view):
            n = os.pwrite(self.fd, view[:_WRITE_CALL_BYTES], pos)
            if self.sfr is not None:
                t2 = time.perf_counter()
                self.sfr(self.fd, pos, n, _SYNC_FILE_RANGE_WRITE)  # best effort: an error only loses the head start
                sync_s += time.perf_counter() - t2
            view, pos = view[n:], pos + n
        self.stats["sync_range"] += sync_s
        self.stats["pwrite"] += time.perf_counter() - t1 - sync_s

    def drain(self) -> None:
        """Wait until every submitted block and mark is done (raises the writer thread's error)."""
        for i, fut in enumerate(self.futs):
            if fut is not None:
                self.futs[i] = None
                fut.result()
        while self.marks:
            self.marks.pop(0).result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True)
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _stop_writes(rows) -> None:
    """Wait for the writer thread (queued writes and marks) on the way out of an error; its own
    error, if any, is dropped: the one already propagating is the one to report."""
    if rows is not None:
        try:
            rows.close()
        except Exception:
            pass


class ConstantColumnWarning(UserWarning):
    """Some input columns are constant across the K models: they have no correlation."""


class TopKResult(tuple):
    """``(values, indices)``, both [M, k], best first (unpacks like a tuple), with attributes
    ``values``, ``indices``, ``constant_train`` and ``constant_test`` (int64 numpy arrays of the
    indices of constant columns: never selected in pearson mode)."""

    def __new__(cls, values, indices, constant_train, constant_test):
        self = super().__new__(cls, (values, indices))
        self.constant_train = constant_train
        self.constant_test = constant_test
        return self

    @property
    def values(self):
        return self[0]

    @property
    def indices(self):
        return self[1]


# ---------------------------------------------------------------------------------- engines
def _engine(backend: str, K: int, M: int, *, method, device, precision, compute64, tile):
    """The chosen backend's engine (its class is looked up in the registry, imported on first use).
    precision None: each engine's default (tf32 on a GPU, fp32 otherwise)."""
    return kernel(_ENGINES, backend)(
        K, M, method=method, device=device, precision=precision, compute64=compute64, tile=tile
    )


def _setup(train, test, op, backend, method, nan_policy, precision, tile):
    precision = check_options(method, nan_policy, precision, tile)
    tr, te = Source(train, "train"), Source(test, "test")
    check_pair(tr, te)
    devs = {d for d in (tr.device, te.device) if d.type == "cuda"}
    if len(devs) > 1:
        raise ValueError(f"train and test are on different CUDA devices: {sorted(map(str, devs))}")
    device = devs.pop() if devs else torch.device("cpu")
    chosen = select_backend(op, implemented(_ENGINES), device.type, backend)
    kinds = {tr.kind, te.kind}
    out_kind = "torch" if "torch" in kinds else "cupy" if "cupy" in kinds else "numpy"
    return tr, te, device, chosen, precision, out_kind


def _to_kind(t: torch.Tensor, kind: str):
    if kind == "numpy":
        return t.cpu().numpy()
    if kind == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t


def _load_test(engine, te: Source, device, factor: float, nan_policy: str) -> np.ndarray:
    """Standardise the whole test matrix once (it is multiplied with every train tile)."""
    if device.type == "cpu" or te.device.type == "cpu":  # read into host memory: the tile and its float64 copy
        from ..storage.memory import check_fits_in_memory

        check_fits_in_memory(2 * 8 * te.K * te.n, f"{te.name} matrix [{te.K}, {te.n}] (loaded whole, float64)")
    blk = te.torch_tile(0, te.n, device) if engine.torch_based else te.numpy_tile(0, te.n)
    st = engine.set_test(blk, factor)
    if st.first_bad >= 0 and nan_policy == "raise":
        j, k = divmod(st.first_bad, te.K)
        raise nonfinite_error(te, st.first_bad, 0, float(blk[k, j]))
    if st.overflow >= 0:
        raise overflow_error(
            te.name, st.overflow, blk[:, st.overflow].cpu() if isinstance(blk, torch.Tensor) else blk[:, st.overflow]
        )
    return np.nonzero(st.constant)[0].astype(np.int64)


def _train_tiles(engine, tr: Source, device, nan_policy: str, progress: bool, desc: str, skip=None):
    """Yield (j0, j1, TileStats) over train column tiles; collects constant columns in engine.constant_train."""
    from tqdm.auto import tqdm

    tile = engine.tile
    starts = range(0, tr.n, tile)
    consts = []
    with tqdm(total=len(starts), desc=desc, unit="tile", disable=not progress) as bar:
        for j0 in starts:
            j1 = min(tr.n, j0 + tile)
            if skip is not None and skip(j0, j1):
                bar.update(1)
                continue
            blk = tr.torch_tile(j0, j1, device) if engine.torch_based else tr.numpy_tile(j0, j1)
            st = engine.standardise(blk, 1.0)
            if st.first_bad >= 0 and nan_policy == "raise":
                j, k = divmod(st.first_bad, tr.K)
                raise nonfinite_error(tr, st.first_bad, j0, float(blk[k, j]))
            if st.overflow >= 0:
                col = blk[:, st.overflow]
                raise overflow_error(tr.name, j0 + st.overflow, col.cpu() if isinstance(col, torch.Tensor) else col)
            if st.constant.any():
                consts.append(np.nonzero(st.constant)[0] + j0)
            yield j0, j1, st
            bar.update(1)
    engine.constant_train = np.concatenate(consts).astype(np.int64) if consts else np.zeros(0, np.int64)


def _warn_constants(method: str, const_train, const_test, stacklevel=3):
    parts = []
    for name, idx in (("train", const_train), ("test", const_test)):
        if len(idx):
            shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
            parts.append(f"{len(idx)} {name} column(s) [{shown}]")
    if parts and method == "pearson":
        warnings.warn(
            "constant across the K models, so their correlation is undefined (NaN, never selected by "
            "topk): " + "; ".join(parts),
            ConstantColumnWarning,
            stacklevel=stacklevel,
        )


def _factors(method: str, K: int, largest: bool = True) -> float:
    """Factor applied to the standardised test columns: the sign for largest=False, 1/(K-1) for covariance."""
    f = 1.0 if largest else -1.0
    return f / (K - 1) if method == "covariance" else f


# ---------------------------------------------------------------------------------- correlate
def correlate(
    train,
    test,
    *,
    method: str = "pearson",
    out=None,
    out_dtype="float32",
    backend: str | None = None,
    progress: bool = False,
    nan_policy: str = "raise",
    precision: str | None = None,
    resume: bool = True,
    tile: int | None = None,
):
    """All scores: ``[N, M]`` with ``scores[i, j]`` = correlation (or covariance) across the K
    models between train example i (column of ``train`` [K, N]) and test example j (column of
    ``test`` [K, M]). See the module docstring for the exact expression and the constant-column rule.

    train, test: numpy arrays (memmaps too), torch tensors (CPU or CUDA), cupy arrays, or a storage
      Reader / ShardedStore / path (read in column tiles, never loaded whole; a store must hold one tensor).
    out: None (a new array: torch in -> torch on the input's device, cupy -> cupy, else numpy); an
      existing [N, M] numpy array or torch tensor to fill; or a path: tiles stream into a safetensors
      file (tensor ``scores``, written by daunce_fast.storage) and the read-only memory map of the
      finished file is returned. An interrupted call leaves ``PATH.partial``: calling again with
      ``resume=True`` (default) skips the tiles already written, but only when everything that
      determines the scores matches what the partial file was computed from (both matrices in full,
      by content fingerprint; method; out_dtype; backend and precision; the file format version):
      otherwise ResumeMismatchError (a storage.LayoutMismatchError) names what differs. Pass
      ``resume=False`` (or delete ``PATH.partial``) to discard the partial file and start afresh.
      An existing array must be writable, floating point, [N, M], without overlapping elements
      (ValueError / TypeError before anything is computed).
    out_dtype: "float32" (default), "float64", "float16" or "bfloat16" (not for numpy results).
    backend: None (best live: cuda, triton, cpu, torch) or one of them. precision: None / "fp32" /
      "tf32" / "bf16" for the product on GPU backends (default tf32 there; the cpu backend is fp32,
      and fp64 when out_dtype="float64"; torch is fp64).
    nan_policy: "raise" (ValueError naming the first non-finite (model, example)) or "propagate"
      (NaN scores for the affected columns, like numpy). Finite columns whose float64 mean or
      variance overflows (values near 1e308) raise a ValueError naming the column.
    tile: train columns per tile, None (automatic) or a positive int (ValueError otherwise).
    """
    tr, te, device, backend, precision, out_kind = _setup(
        train, test, "correlate", backend, method, nan_policy, precision, tile
    )
    try:
        return _correlate(
            tr, te, device, backend, precision, out_kind, method, out, out_dtype, progress, nan_policy, resume, tile
        )
    finally:
        tr.close()
        te.close()


def _correlate(
    tr, te, device, backend, precision, out_kind, method, out, out_dtype, progress, nan_policy, resume, tile
):
    N, M, K = tr.n, te.n, tr.K
    odt = out_torch_dtype(out_dtype)
    to_path = isinstance(out, (str, os.PathLike))
    if odt == torch.bfloat16 and out is None and out_kind == "numpy":
        raise ValueError("out_dtype='bfloat16' cannot be returned as a numpy array; pass torch tensors or out=PATH")
    # the output is checked before anything is computed
    target = _out_target(out, N, M) if out is not None and not to_path else None
    engine = _engine(
        backend, K, M, method=method, device=device, precision=precision, compute64=(odt == torch.float64), tile=tile
    )
    const_test = _load_test(engine, te, device, _factors(method, K), nan_policy) if M else np.zeros(0, np.int64)

    writer = rows = None
    if to_path:
        from .. import storage

        dtype_name = str(odt).replace("torch.", "")
        meta = resume_metadata(
            tr,
            te,
            method=method,
            out_dtype=dtype_name,
            backend=backend,
            precision=effective_precision(backend, precision, device.type, dtype_name),
        )
        try:
            writer = storage.create(out, {"scores": ((N, M), dtype_name)}, metadata=meta, resume=resume)
        except storage.LayoutMismatchError as exc:
            raise mismatch_error(exc, out, meta) from None
        target = writer.torch("scores")
        if N and M:
            step = max(1, _WRITE_BYTES // (M * target.element_size()))
            rows = _FileRows(
                writer["scores"], min(step, engine.tile, N), M, odt, clip=method == "pearson", writer=writer
            )
    elif target is None:
        target = torch.empty((N, M), dtype=odt, device=device)

    if engine.torch_based is False and target.device.type != "cpu":
        raise ValueError("the cpu backend cannot write into a CUDA output")
    pending, pending_bytes = [], 0
    t_start = time.perf_counter()
    try:
        if M:
            skip = (lambda j0, j1: writer.is_done(f"{j0}:{j1}")) if writer is not None else None
            for j0, j1, st in _train_tiles(engine, tr, device, nan_policy, progress, "correlate", skip):
                if writer is None:
                    engine.full_tile(st.z, target[j0:j1])
                else:
                    for r0 in range(0, j1 - j0, rows.rows):
                        r1 = min(j1 - j0, r0 + rows.rows)
                        buf = rows.buffer(r1 - r0)
                        t0 = time.perf_counter()
                        engine.full_tile(st.z[:, r0:r1], buf, clip=False)
                        rows.stats["compute"] += time.perf_counter() - t0
                        rows.submit(j0 + r0, buf)
                    # durable every _MARK_EVERY bytes or every few seconds (writer.journal_due), whichever
                    # comes first: one fsync + journal entry per batch, so a killed run loses seconds, not all.
                    # The mark runs in the writer thread behind this batch's writes (the product goes on).
                    pending.append(f"{j0}:{j1}")
                    pending_bytes += (j1 - j0) * M * target.element_size()
                    if pending_bytes >= _MARK_EVERY or writer.journal_due():
                        if _MARK_IN_WRITER:
                            rows.mark(pending)
                        else:
                            rows.drain()
                            writer.mark_done(*pending)
                        writer.mark_requested()  # one batch per journal_every, not one per tile during an fsync
                        pending, pending_bytes = [], 0
        else:
            engine.constant_train = np.zeros(0, np.int64)
        if writer is not None:
            t0 = time.perf_counter()
            if rows is not None:
                rows.close()
            if pending:
                writer.mark_done(*pending)
            writer.close()
            if rows is not None:
                last_write_stats.clear()
                last_write_stats.update(rows.stats, close=time.perf_counter() - t0, total=time.perf_counter() - t_start)
    except ValueError:
        if writer is not None:
            _stop_writes(rows)
            writer.abort(keep=False)  # bad input: nothing to resume
        raise
    except BaseException:
        if writer is not None:
            _stop_writes(rows)  # the writer thread may be inside mark_done: let it finish first
            writer.abort(keep=True)  # interrupted: PATH.partial + journal stay for a resume
        raise
    finally:
        if rows is not None:
            rows.close()
    _warn_constants(method, engine.constant_train, const_test, stacklevel=4)
    if to_path:
        from .. import storage

        reader = storage.open(out)
        return reader.torch("scores") if out_kind == "torch" else reader["scores"]
    if out is not None:
        return out
    return _to_kind(target, out_kind)


def _out_target(out, N: int, M: int) -> torch.Tensor:
    """A torch view of the caller's ``out`` array, after checking it can take the [N, M] scores:
    writable, floating point, the right shape, no negative strides or overlapping elements.
    (A read-only array or map is refused here: torch would write through it, or crash on a
    read-only mapping.)"""
    if isinstance(out, torch.Tensor):
        target = out
    elif isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ValueError(
                "out is a read-only array (e.g. a read-only memmap or a storage reader's view): pass a "
                "writable [N, M] array, or out=PATH to stream the scores to a file"
            )
        if out.dtype.kind != "f":
            raise TypeError(f"out must be a floating-point array, got {out.dtype}")
        if any(s < 0 for s in out.strides):
            raise ValueError(f"out has negative strides {out.strides}: pass a forward view or a fresh array")
        if out.dtype.byteorder == ">":
            raise TypeError(f"out must be a native-byte-order array, got {out.dtype}")
        target = torch.from_numpy(out)
    elif hasattr(out, "__dlpack__"):
        target = torch.from_dlpack(out)
    else:
        raise TypeError(
            f"out must be None, a path, a numpy array, a torch tensor or a DLPack array, got {type(out).__name__}"
        )
    if tuple(target.shape) != (N, M):
        raise ValueError(f"out has shape {tuple(target.shape)}, expected [N, M] = [{N}, {M}]")
    if not target.dtype.is_floating_point:
        raise TypeError(f"out must be a floating-point array, got {target.dtype}")
    if target.requires_grad:
        raise ValueError("out requires grad: pass a tensor without autograd history (e.g. out.detach())")
    if any(st == 0 and sz > 1 for st, sz in zip(target.stride(), target.shape)):
        raise ValueError(
            f"out has overlapping elements (stride 0 in shape {tuple(target.shape)}, e.g. from expand / "
            f"broadcast_to): pass an array with one element per score"
        )
    return target


# ---------------------------------------------------------------------------------- topk
def topk(
    train,
    test,
    k: int,
    *,
    method: str = "pearson",
    largest: bool = True,
    backend: str | None = None,
    progress: bool = False,
    nan_policy: str = "raise",
    precision: str | None = None,
    tile: int | None = None,
):
    """The k best train examples of every test example, without materialising [N, M].

    Returns ``TopKResult(values [M, k] float32, indices [M, k] int64)``, best first (largest scores
    with ``largest=True``, smallest with False); ties go to the lower train index on the cpu and
    torch backends. Memory is O(tile x M + M x k) whatever N is. A test column with fewer than k
    selectable train examples (constant / NaN columns) gets NaN values and index -1 in the rest.
    Inputs, backend, precision, nan_policy and tile as in :func:`correlate` (tile: None or a positive
    int; finite columns whose float64 statistics overflow raise). k > N raises.
    """
    tr, te, device, backend, precision, out_kind = _setup(
        train, test, "topk", backend, method, nan_policy, precision, tile
    )
    try:
        k = check_k(k, tr.n)
        if tr.n >= 0xFFFFFFFF:
            raise ValueError("topk supports N < 2**32 - 1 train examples")
        return _topk(tr, te, k, device, backend, precision, out_kind, method, largest, progress, nan_policy, tile)
    finally:
        tr.close()
        te.close()


def _topk(tr, te, k, device, backend, precision, out_kind, method, largest, progress, nan_policy, tile):
    M, K = te.n, tr.K
    dev = device if backend != "cpu" else torch.device("cpu")
    if M == 0 or k == 0:
        engine = _engine(
            backend, K, max(M, 1), method=method, device=device, precision=precision, compute64=False, tile=tile
        )
        const_test = _load_test(engine, te, device, 1.0, nan_policy) if M else np.zeros(0, np.int64)
        const_train = np.zeros(0, np.int64)
        if tr.n:
            for _ in _train_tiles(engine, tr, device, nan_policy, False, "topk"):
                pass  # validates the train matrix (non-finite policy) like the full path
            const_train = engine.constant_train
        values = torch.empty((M, k), dtype=torch.float32, device=dev)
        indices = torch.empty((M, k), dtype=torch.int64, device=dev)
    else:
        engine = _engine(backend, K, M, method=method, device=device, precision=precision, compute64=False, tile=tile)
        const_test = _load_test(engine, te, device, _factors(method, K, largest), nan_policy)
        engine.start_topk(k)
        for j0, _, st in _train_tiles(engine, tr, device, nan_policy, progress, "topk"):
            engine.select_tile(st.z, j0)
        values, indices = engine.finish_topk()
        const_train = engine.constant_train
        if not largest:
            values = -values
        if method == "pearson":
            values = values.clamp(-1.0, 1.0)
    _warn_constants(method, const_train, const_test, stacklevel=4)
    values, indices = values.to(device), indices.to(device)
    return TopKResult(_to_kind(values, out_kind), _to_kind(indices, out_kind), const_train, const_test)


# ---------------------------------------------------------------------------------- merge
def merge_topk(parts, k: int | None = None, *, largest: bool = True) -> TopKResult:
    """Merge top-k results of disjoint train shards (e.g. one per rank) into one.

    parts: sequence of ``(values [M, k_p], indices [M, k_p])`` (numpy or torch; indices already
    global, i.e. shard offset added; -1 / NaN slots are empty). Returns the best ``k`` (default:
    the largest k_p) per test column, best first, ties to the lower train index, as a TopKResult
    of the first part's kind and device (constant_train / constant_test are empty here).
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge_topk needs at least one (values, indices) pair")
    kind = "torch" if isinstance(parts[0][0], torch.Tensor) else "numpy"
    dev = parts[0][0].device if kind == "torch" else torch.device("cpu")
    vals = [torch.as_tensor(np.asarray(v) if kind == "numpy" else v).to(dev, torch.float32) for v, _ in parts]
    idxs = [torch.as_tensor(np.asarray(i) if kind == "numpy" else i).to(dev, torch.int64) for _, i in parts]
    M = vals[0].shape[0]
    if any(v.shape[0] != M or v.shape != i.shape for v, i in zip(vals, idxs)):
        raise ValueError("every part must be (values [M, k_p], indices [M, k_p]) with the same M")
    k = max(v.shape[1] for v in vals) if k is None else int(k)
    v, i = torch.cat(vals, 1), torch.cat(idxs, 1)
    if k > v.shape[1]:
        raise ValueError(f"k={k} exceeds the {v.shape[1]} candidates per column")
    v, i = merge_candidates(v, i, k, largest)
    none = np.zeros(0, np.int64)
    return TopKResult(*(_to_kind(t, kind) if kind == "numpy" else t for t in (v, i)), none, none)


__all__ = ["correlate", "topk", "merge_topk", "TopKResult", "ConstantColumnWarning"]
