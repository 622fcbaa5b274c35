"""The DAUNCE pipeline: ``Daunce(model, ...).fit(train)`` then ``.scores(train, test)``.

Work directory (resumable: a run killed at any point and started again with the same workdir
continues from the last completed chunk and gives the same result):

    workdir/summary.json                   what the run perturbs (Daunce.summary().to_dict()),
                                           written at the start of fit; informative only
    workdir/calibration.json               the lr and epochs the copies trained with, what they were
                                           calibrated from, and the first chunk's diagnostics
                                           (calibration.py); written when the first chunk trains.
                                           Informative: the values are a pure function of the
                                           fingerprinted config, θ0 and training set, so a resumed
                                           run computes the same ones
    workdir/state.json                     content fingerprints of what the contents were computed
                                           from: θ0's parameters and buffers, the training set in
                                           full, the training config, K, the chunking, the format
                                           version (see workdir.py)
    workdir/adapters/chunk_XXXXX.safetensors   adapter weights of each trained chunk of models
    workdir/losses/<name>.safetensors      tensor "targets" [K, N] float32: per-example targets of
                                           every model (row k = model k), streamed chunk by chunk

Under torch.distributed (a process group of W > 1 ranks, see daunce_fast.distributed and
docs/distributed.md) rank r trains and records a contiguous range of the chunks and writes its own
shard of each loss store: losses/<name>.index.json over losses/<name>-0000r-of-0000W.safetensors
(one logical [K, N], rows of rank r's models). Rank 0 writes state.json; the workdir must be on a
filesystem every rank sees.

Trust: reusing a workdir with another θ0, training set, config or K raises
:class:`~daunce_fast.daunce.errors.WorkdirError` naming what differs (``overwrite=True`` starts
afresh instead); every loss store carries the run's fingerprint and its dataset's, checked before
it is resumed or read (``scores("train", "test")`` by name included). Store names must be plain
file names (see workdir.check_name). Without ``workdir=`` the run lives in one temporary directory
that is deleted on ``close()``, at the end of a ``with`` block, when the object is garbage-collected
or at interpreter exit (success or error), unless ``keep_workdir=True``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from . import calibration
from .config import LM_DEFAULTS, SCORE_METHOD, DaunceConfig
from .data import as_examples
from .errors import WorkdirError
from .heads import LMHead, LogitsHead, base_pass, is_causal_lm
from .recorder import record_chunk
from .summary import PerturbationSummary
from .targets import default_targets
from .trainer import ChunkPlan, train_chunk
from .workdir import (
    CALIBRATION_FILE,
    STATE_FILE,
    STATE_VERSION,
    SUMMARY_FILE,
    check_name,
    differences,
    mismatch_error,
    read_state,
    run_id,
    store_files,
    wipe,
    write_json,
    write_state,
)

logger = logging.getLogger(__name__)


def _progress(enabled: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, **kw)


class Daunce:
    """DAUNCE training-data attribution with K perturbed models trained as batched adapters.

    ``model`` (θ0) is never modified: adapters are attached to a copy. Every keyword is a field
    of :class:`DaunceConfig` (num_models, ratio, objective, rho, perturbation, gamma, target, rank, alpha,
    target_modules, optimizer, lr, weight_decay, epochs, steps, batch_size, schedule,
    max_grad_norm, adapter_chunk, row_budget, antithetic, seed), plus:

    workdir:    where losses, adapters and state live (default: a new temporary directory
                ``daunce_*`` under tempfile.gettempdir(), deleted by close(), at the end of a
                ``with`` block, on garbage collection or at interpreter exit)
    keep_workdir: keep that temporary directory instead (its path is ``.workdir``); no effect
                with ``workdir=``
    overwrite:  when the workdir holds another run (other θ0, training set, config, K, chunking or
                format version) or a store name holds another dataset's targets, delete them and
                start afresh instead of raising WorkdirError (only the workdir's state.json,
                adapters/ and losses/ are deleted)
    loss_fn:    per-example loss ``loss_fn(outputs, labels) -> [B]`` (default: cross-entropy,
                token-averaged for [B, T, V] outputs); the first-order term's gradient is taken
                from it by autograd at the base outputs
    forward_fn: ``forward_fn(model, inputs) -> outputs`` (default: model(*inputs) or
                model(**inputs), ``.logits`` of Hugging Face outputs)
    progress:   tqdm bars over chunks and steps
    group:      torch.distributed process group to shard over (default: the default group when one
                is initialised with more than one rank; otherwise a single-process run)
    """

    def __init__(
        self,
        model,
        *,
        workdir=None,
        loss_fn=None,
        forward_fn=None,
        progress: bool = False,
        group=None,
        overwrite: bool = False,
        keep_workdir: bool = False,
        **config,
    ):
        unknown = set(config) - set(DaunceConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Daunce: unknown option(s) {sorted(unknown)}")
        head = config.get("head", "auto")
        if head == "auto":
            head = "lm" if is_causal_lm(model) else "logits"
        if head == "lm":  # the LM defaults fill every option the caller did not give
            lm = {k: v for k, v in LM_DEFAULTS.items() if k not in config}
            if "epochs" in config and "steps" not in config:
                lm.pop("steps", None)
            config = {**lm, **config}
        elif loss_fn is not None and "perturbation" not in config:
            config = {**config, "perturbation": "xi"}  # "hessian" needs the built-in cross-entropy
        self.config = DaunceConfig(**config).validate()
        self.model = model
        if head == "lm":
            if loss_fn is not None or forward_fn is not None:
                raise ValueError(
                    "Daunce: loss_fn/forward_fn apply to the logits head; language models use the fused loss head"
                )
            if self.config.perturbation == "hessian":
                raise ValueError("Daunce: perturbation 'hessian' is not available with the fused language-model head")
            if self.config.lr == "auto":
                raise ValueError(
                    "Daunce: lr='auto' is calibrated for classifiers (the logits head); language models keep "
                    f"LM_DEFAULTS' lr {LM_DEFAULTS['lr']} unless lr is given"
                )
            self.head = LMHead(self.config)
        else:
            if self.config.perturbation == "hessian" and loss_fn is not None:
                raise ValueError(
                    "Daunce: perturbation 'hessian' uses the Hessian of the built-in cross-entropy; "
                    "it cannot be used with a custom loss_fn"
                )
            self.head = LogitsHead(self.config, forward_fn=forward_fn, loss_fn=loss_fn)
        self.progress = progress
        self.group = group
        self.overwrite = bool(overwrite)
        self._state: dict | None = None  # the workdir's state, checked against this object's
        self._theta0_fp: str | None = None
        self._chunk_model = None
        self._calibration: calibration.Calibration | None = None
        self._calibrated_for: str | None = None  # fingerprint of the training set it was computed on
        self._closed = False
        self._cleanup = None
        if workdir is not None:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="daunce_"))
            if not keep_workdir:  # runs at close(), on garbage collection or at exit, whichever first
                self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.workdir), True)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the adapter copy of θ0 and delete the temporary workdir (one made because no
        ``workdir=`` was given, unless ``keep_workdir=True``). Idempotent; the object cannot fit,
        record or score afterwards."""
        self._closed = True
        self._chunk_model = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Daunce:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self) -> None:
        if self._closed:
            raise RuntimeError("Daunce: this object was closed (its temporary workdir is gone); make a new one")

    # ------------------------------------------------------------------ layout
    @property
    def num_models(self) -> int:
        return int(self.config.num_models)

    @property
    def rank(self):
        """The adapters' rank: the configured one, else "full" for classifiers and
        ``LM_DEFAULTS["rank"]`` (16) for language models (which get it filled in as a default)."""
        if self.config.rank is not None:
            return self.config.rank
        return "full" if self.head.kind == "logits" else LM_DEFAULTS["rank"]

    def _rank_world(self) -> tuple[int, int]:
        from ..distributed.group import rank_world

        return rank_world(self.group)

    def chunk_size(self) -> int:
        cfg = self.config
        k_c = cfg.adapter_chunk or max(1, cfg.row_budget // cfg.batch_size)
        world = self._rank_world()[1]
        if world > 1:  # at most ceil(K / W) models per chunk, so that every rank gets work
            k_c = min(k_c, -(-self.num_models // world))
        return max(1, min(self.num_models, k_c))

    def chunks(self) -> list[tuple[int, list[int]]]:
        """(chunk id, model ids) of every chunk. Once the workdir's state is read, the chunking it
        records (the one its adapters were saved under), so that recording and scoring work after
        adapter_chunk, row_budget or the number of ranks changed."""
        K = self.num_models
        kc = self._state["chunk_size"] if self._state is not None else self.chunk_size()
        return [(c, list(range(k0, min(K, k0 + kc)))) for c, k0 in enumerate(range(0, K, kc))]

    def my_chunks(self) -> list[tuple[int, list[int]]]:
        """This rank's contiguous range of chunks (all of them in a single process)."""
        from ..distributed.group import share

        rank, world = self._rank_world()
        chunks = self.chunks()
        c0, c1 = share(len(chunks), rank, world)
        return chunks[c0:c1]

    def _shard_sizes(self) -> list[int]:
        """Models (rows of the loss stores) of each rank."""
        from ..distributed.group import split

        chunks, world = self.chunks(), self._rank_world()[1]
        sizes, c0 = [], 0
        for n in split(len(chunks), world):
            sizes.append(sum(len(ids) for _, ids in chunks[c0 : c0 + n]))
            c0 += n
        return sizes

    def loss_path(self, name: str) -> Path:
        """losses/<name>.safetensors; ValueError for a name that is not a plain file name."""
        return self.workdir / "losses" / f"{check_name(name)}.safetensors"

    def loss_index_path(self, name: str) -> Path:
        """Index of the sharded loss store written by a distributed run."""
        return self.workdir / "losses" / f"{check_name(name)}.index.json"

    def _stored(self, name: str) -> Path | None:
        """The loss store of ``name``: the single file, else a distributed run's index, else None."""
        for p in (self.loss_path(name), self.loss_index_path(name)):
            if p.exists():
                return p
        return None

    def _adapter_path(self, c: int) -> Path:
        return self.workdir / "adapters" / f"chunk_{c:05d}.safetensors"

    # ------------------------------------------------------------------ state
    def _theta0(self) -> str:
        """Digest of θ0's parameters and buffers (computed once per object: θ0 is never modified)."""
        if self._theta0_fp is None:
            from ..storage.fingerprint import module_digest

            self._theta0_fp = module_digest(self.model, "daunce.theta0")
        return self._theta0_fp

    def _new_state(self, train_fp: str | None) -> dict:
        return {
            "version": STATE_VERSION,
            "theta0": self._theta0(),
            "train": train_fp,
            "config": json.loads(json.dumps(self.config.training_fingerprint(), default=str)),
            "num_models": self.num_models,
            "chunk_size": self.chunk_size(),
        }

    def _run_id(self) -> str:
        return run_id(self._state)

    def _check_state(self, train_fp: str) -> None:
        from ..distributed.agreement import run_on_all

        rank, world = self._rank_world()
        if world == 1:
            return self._check_state_local(train_fp)
        # rank 0 writes state.json (or checks it), then every rank checks the same file
        run_on_all("Daunce: state.json", lambda: rank == 0 and self._check_state_local(train_fp), self.group)
        if rank:
            self._check_state_local(train_fp)

    def _check_state_local(self, train_fp: str) -> None:
        """Write state.json, or check that the one there describes this run (WorkdirError naming what
        differs; with overwrite=True, wipe the workdir's run and start afresh)."""
        path = self.workdir / STATE_FILE
        state = self._new_state(train_fp)
        if path.exists() or path.is_symlink():
            try:
                diff = differences(read_state(path), state, chunking=True)
            except WorkdirError:
                if not self.overwrite:
                    raise
                diff = ["an unreadable state.json"]
            if diff and not self.overwrite:
                raise mismatch_error(self.workdir, diff)
            if diff:
                wipe(self.workdir)
        if not path.exists():
            write_state(path, state)
        self._state = state

    def _fitted(self) -> str | None:
        """The training set's fingerprint of a finished or started fit in this workdir (this object's,
        or one read back from state.json when another process ran fit with the same θ0 and options;
        WorkdirError when state.json holds another run). None when nothing was fitted."""
        if self._state is None:
            path = self.workdir / STATE_FILE
            if not (path.exists() or path.is_symlink()):
                return None
            old = read_state(path)
            diff = differences(old, self._new_state(None), chunking=False)
            if diff:
                raise mismatch_error(self.workdir, diff)
            self._state = old  # its chunking is the one the adapters were saved under
        return self._state["train"]

    def _model_for(self, ids: list[int]):
        """A copy of θ0 carrying adapters for global model ids ``ids`` (reused across chunks)."""
        from .. import lora

        cfg = self.config
        if self._chunk_model is not None and self._chunk_model[2] == len(ids):
            model, params, _ = self._chunk_model
            lora.reset_adapters(model, ids, cfg.seed)
            return model, params
        model = copy.deepcopy(self.model)
        for p in model.parameters():
            p.requires_grad_(False)
        targets = cfg.target_modules
        if targets is None:
            targets = default_targets(model, self.head.kind == "lm")
        rank = self.rank
        alpha = cfg.alpha if cfg.alpha is not None else (1.0 if rank == "full" else float(rank))
        # attach_copies: the model itself may be the target (a bare nn.Linear); every BatchNorm
        # goes under the copy rules (per-copy statistics or θ0's, never updated)
        model, params = lora.attach_copies(
            model,
            num_adapters=len(ids),
            rank=rank,
            alpha=alpha,
            target_modules=targets,
            seed=cfg.seed,
            adapter_ids=ids,
            batchnorm=cfg.batchnorm,
        )
        params = [p for p in params if p.requires_grad]
        self._chunk_model = (model, params, len(ids))
        return model, params

    def _save_adapters(self, c: int, model) -> None:
        from .. import lora, storage

        state = {k: v.detach().cpu().contiguous() for k, v in lora.adapter_state(model).items()}
        path = self._adapter_path(c)
        path.parent.mkdir(parents=True, exist_ok=True)
        with storage.create(
            str(path), {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
        ) as w:
            for k, v in state.items():
                w[k][...] = v.numpy()

    def _load_adapters(self, c: int, model) -> None:
        from .. import lora, storage

        with storage.open(str(self._adapter_path(c))) as r:
            state = {k: torch.from_numpy(np.array(r[k])) for k in r.names()}
        lora.load_adapter_state(model, state)

    def _open_store(self, name: str, n: int, fingerprint: str):
        from .. import storage

        meta = {
            "daunce_fast.target": self.config.target,
            "daunce_fast.dataset": fingerprint,
            "daunce_fast.run": self._run_id(),
            "daunce_fast.config": json.dumps(self.config.training_fingerprint(), sort_keys=True, default=str),
        }
        path = self.loss_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        rank, world = self._rank_world()

        def create():
            if world > 1:  # every rank writes the same index (race-safe), then its own shard
                sw = storage.create_sharded(
                    str(self.loss_index_path(name)),
                    "targets",
                    (self.num_models, n),
                    "float32",
                    axis=0,
                    shard_sizes=self._shard_sizes(),
                    metadata=meta,
                )
                return sw.create_shard(rank, resume=True)
            return storage.create(str(path), {"targets": ((self.num_models, n), "float32")}, metadata=meta, resume=True)

        try:
            return create()
        except storage.LayoutMismatchError as exc:  # an interrupted store of other data or another run
            if not self.overwrite:
                raise WorkdirError(
                    f"Daunce: the unfinished loss store {name!r} in {path.parent} was started for "
                    f"other data or another run ({exc}); record under another name, or pass "
                    "overwrite=True to record it again"
                ) from exc
            for f in store_files(path.parent, name):
                f.unlink(missing_ok=True)
            return create()

    def _row_offset(self) -> int:
        """Global index of the first model of this rank's shard (row 0 of its loss-store shard)."""
        mine = self.my_chunks()
        return mine[0][1][0] if self._rank_world()[1] > 1 and mine else 0

    def _stale(self, name: str, fingerprint: str | None) -> str | None:
        """Why the finished store (or sharded index) of ``name`` is not this run's targets of the
        dataset ``fingerprint`` (None: any dataset), or None when it is (or nothing is stored)."""
        from .. import storage
        from ..storage.sharded import load_index

        path = self._stored(name)
        if path is None:
            return None
        if path.name.endswith(".index.json"):
            idx = load_index(str(path))
            meta, k = idx["metadata"], idx["shape"][0]
        else:
            with storage.open(str(path)) as r:
                meta, k = r.metadata, r.shape("targets")[0]
        if meta.get("daunce_fast.run") != self._run_id() or k != self.num_models:
            return f"{path} was recorded by another run (other θ0, training set, config or K, or an older version)"
        if fingerprint is not None and meta.get("daunce_fast.dataset") != fingerprint:
            return f"{path} holds the targets of another dataset than the one given for {name!r}"
        return None

    def _check_stored(self, name: str, fingerprint: str | None) -> bool:
        """True when ``name`` has a finished store of this run and dataset; False when none (or,
        with overwrite=True, a stale one, which is deleted); WorkdirError when stale."""
        why = self._stale(name, fingerprint)
        if why is None:
            return self._stored(name) is not None
        if not self.overwrite:
            raise WorkdirError(f"Daunce: {why}; record under another name, or pass overwrite=True to record it again")
        for f in store_files(self.workdir / "losses", name):
            f.unlink(missing_ok=True)
        return False

    def _store_complete(self, name: str, fingerprint: str) -> bool:
        """True when the store of ``name`` is complete (distributed: this rank's shard of it)."""
        if self._check_stored(name, fingerprint) and self.loss_path(name).exists():
            return True
        index = self.loss_index_path(name)
        if not index.exists():
            return False
        from ..storage.sharded import load_index

        idx = load_index(str(index))
        files = [index.parent / s["file"] for s in idx["shards"]]
        rank, world = self._rank_world()
        if all(f.exists() for f in files):  # complete, whichever number of ranks wrote it
            return True
        if world == 1:
            return False
        if [s["size"] for s in idx["shards"]] != self._shard_sizes():
            raise WorkdirError(
                f"Daunce: {index} was written by a run over {len(files)} ranks with other shards; "
                f"rerun with that many ranks, or remove it to record again over {world}"
            )
        return files[rank].exists()

    # ------------------------------------------------------------------ public API
    def fit(self, train, *, record: dict | None = None) -> Daunce:
        """Train the K perturbed models on ``train`` chunk by chunk and record the [K, N] targets of
        ``train`` (name "train") and of each dataset in ``record`` ({name: dataset}) right after each
        chunk trains. Resumes from the last completed chunk of an interrupted run. Distributed: each
        rank trains and records its own chunks; returns when every rank has finished (a failure on
        one rank raises on all).

        WorkdirError when the workdir holds another run (another θ0, training set, config, K or
        chunking) or a name in ``record`` holds another dataset's targets, unless overwrite=True."""
        from ..distributed.agreement import run_on_all

        self._live()
        for name in record or {}:
            check_name(name)
        ex = as_examples(train)
        fp = ex.fingerprint()
        self._check_state(fp)
        sets = {"train": (ex, fp)}
        for name, data in (record or {}).items():
            if name == "train":
                raise ValueError(
                    'Daunce.fit: the name "train" is the training set\'s; record other data under another name'
                )
            e = as_examples(data)
            sets[name] = (e, e.fingerprint())
        if self._rank_world()[1] > 1:
            run_on_all("Daunce.fit", lambda: self._fit(ex, sets), self.group)
            return self
        return self._fit(ex, sets)

    def summary(self) -> PerturbationSummary:
        """What this run perturbs: one row per wrapped module (name, type, kind — full-rank, LoRA
        rank r, norm affine, fallback —, parameters and memory per copy, totals for the K copies,
        and which modules use the slow torch.func fallback). ``print(d.summary())`` prints the
        table; ``.rows`` is the list of dicts, ``.to_dict()`` what ``fit`` stores in
        ``workdir/summary.json``. Builds the adapter copy of θ0 (reused by ``fit``); no training."""
        self._live()
        model, _ = self._model_for(self.chunks()[0][1])
        return PerturbationSummary.of(model, self.num_models)

    def _report_summary(self) -> None:
        """Log the summary once, before training (and print it above the progress bars when
        progress=True); rank 0 stores it as workdir/summary.json."""
        s = self.summary()
        logger.info("%s", s)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(str(s))
        if self._rank_world()[0] == 0:
            write_json(self.workdir / SUMMARY_FILE, s.to_dict())

    @property
    def calibration(self) -> calibration.Calibration | None:
        """The lr and epochs the copies train with and what they were calibrated from (see
        daunce/calibration.py): set by ``fit`` when a chunk trains, else read back from the workdir's
        calibration.json of an earlier fit of this run; None before any chunk trained."""
        if self._calibration is None:
            try:
                fitted = self._fitted()  # reads state.json of an earlier fit of this run
            except WorkdirError:
                fitted = None  # the workdir holds another run: nothing of this one's to report
            data = self._read_calibration() if fitted is not None else None
            if data is not None:
                fields = {k: data[k] for k in calibration.Calibration.__dataclass_fields__}
                self._calibration = calibration.Calibration(**fields)
                self._calibrated_for = fitted  # the file is this run's (its id covers the training set)
        return self._calibration

    def _read_calibration(self) -> dict | None:
        path = self.workdir / CALIBRATION_FILE
        if self._state is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("run") != self._run_id():
            return None  # another run's (a stale file is never reported as this run's)
        return data

    def _calibrate(self, ex, base) -> DaunceConfig:
        """The config the copies train with: ``self.config`` with "auto" lr/epochs replaced by the
        calibrated values (logged once; rank 0 writes calibration.json)."""
        if self._calibration is None or self._calibrated_for != self._state["train"]:
            t0 = base["t0"] if base is not None and "t0" in base else None
            if t0 is None and self.head.kind == "logits" and calibration.wants_calibration(self.config):
                # "blackbox" has no base tables: one pass of θ0 for its training targets
                z0 = base_pass(self.model, ex, self.config.row_budget, self.head.forward)
                t0 = self.head.train_target(z0, ex.labels)
            loss = None if t0 is None else float(t0.double().mean())
            self._calibration = calibration.calibrate(self.config, len(ex), loss)
            self._calibrated_for = self._state["train"]  # the training set's fingerprint
            logger.info("%s", self._calibration)
            if self.progress:
                from tqdm.auto import tqdm

                tqdm.write(str(self._calibration))
            self._write_calibration()
        return calibration.resolved(self.config, self._calibration)

    def _write_calibration(self, diagnostics: dict | None = None) -> None:
        if self._rank_world()[0] != 0:
            return
        old = self._read_calibration() or {}
        data = {**self._calibration.to_dict(), "run": self._run_id()}
        if diagnostics is not None or "diagnostics" in old:
            data["diagnostics"] = diagnostics if diagnostics is not None else old["diagnostics"]
        write_json(self.workdir / CALIBRATION_FILE, data)

    def _diagnose(self, rows: np.ndarray) -> None:
        """Check the first trained chunk's training-set targets (calibration.diagnose): warn when the
        copies barely moved or diverged; the result goes to calibration.json."""
        cal = self._calibration
        loss_target = self.head.kind == "logits" and self.config.target == "loss" and self.config.objective != "margin"
        d = calibration.diagnose(rows, cal.theta0_loss if cal else None, loss_target=loss_target)
        for w in d["warnings"]:
            logger.warning("Daunce: %s (first chunk, lr %g)", w, cal.lr if cal else float("nan"))
            warnings.warn(f"Daunce: {w}", RuntimeWarning, stacklevel=4)
        if cal is not None:
            self._write_calibration(d)

    def _fit(self, ex, sets) -> Daunce:
        pending = {n: v for n, v in sets.items() if not self._store_complete(n, v[1])}
        if not pending:
            return self
        self._report_summary()
        base = None  # θ0's outputs over the training set: computed when a chunk needs training
        diagnosed = False
        writers = {n: self._open_store(n, len(e), f) for n, (e, f) in pending.items()}
        chunks, off = self.my_chunks(), self._row_offset()
        try:
            with _progress(self.progress, total=len(chunks), desc="daunce chunks", unit="chunk") as bar:
                for c, ids in chunks:
                    key = f"chunk{c}"
                    todo = [n for n, w in writers.items() if not w.is_done(key)]
                    if todo:
                        model, params = self._model_for(ids)
                        if self._adapter_path(c).exists():
                            self._load_adapters(c, model)
                        else:
                            if base is None:
                                base = self.head.base_tables(self.model, ex, self.config.row_budget)
                            plan = ChunkPlan(self._calibrate(ex, base), ids, len(ex))
                            with _progress(
                                self.progress, total=plan.total_steps, desc=f"chunk {c}", unit="step", leave=False
                            ) as steps:
                                train_chunk(model, params, ex, plan, base, self.head, progress=steps)
                            self._save_adapters(c, model)
                        for n in todo:
                            rows = record_chunk(
                                model, pending[n][0], len(ids), self.head, row_budget=self.config.row_budget
                            )
                            writers[n]["targets"][ids[0] - off : ids[-1] + 1 - off] = rows
                            writers[n].mark_done(key)
                            if n == "train" and not diagnosed and self._calibration is not None:
                                diagnosed = True
                                self._diagnose(rows)
                    bar.update(1)
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():  # keep partial files and journals for the resume
                try:
                    w.abort()
                except Exception:
                    pass
            raise
        return self

    def record(self, data, name: str) -> Path:
        """Write the [K, N] targets of ``data`` under ``name`` (the fitted adapters are loaded chunk
        by chunk from the workdir). Returns the loss file's path (distributed: the index's, once every
        rank has written its shard). ``name``: a plain file name (ValueError otherwise, see
        workdir.check_name). The adapters are loaded under the chunking the workdir records, so
        changing adapter_chunk, row_budget or the number of ranks after fit is fine."""
        from ..distributed.agreement import run_on_all

        self._live()
        check_name(name)
        if self._fitted() is None:
            raise RuntimeError(
                "Daunce.record: call fit() first (it trains the models), or use the options of the "
                f"fit recorded in {self.workdir / 'state.json'}"
            )
        ex = as_examples(data)
        fp = ex.fingerprint()
        if self._rank_world()[1] > 1:
            run_on_all("Daunce.record", lambda: self._record(ex, name, fp), self.group)
            return self.loss_index_path(name)
        return self._record(ex, name, fp)

    def _record(self, ex, name: str, fp: str) -> Path:
        if self._store_complete(name, fp):
            return self._stored(name)
        w = self._open_store(name, len(ex), fp)
        off = self._row_offset()
        for c, ids in self.my_chunks():
            key = f"chunk{c}"
            if w.is_done(key):
                continue
            if not self._adapter_path(c).exists():
                raise RuntimeError(f"Daunce.record: adapters of chunk {c} are missing; run fit() to completion first")
            model, _ = self._model_for(ids)
            self._load_adapters(c, model)
            w["targets"][ids[0] - off : ids[-1] + 1 - off] = record_chunk(
                model, ex, len(ids), self.head, row_budget=self.config.row_budget
            )
            w.mark_done(key)
        w.close()
        return self._stored(name) or self.loss_index_path(name)

    def losses(self, name: str = "train") -> np.ndarray:
        """Read-only memory-mapped [K, N] targets recorded under ``name`` (a distributed run's
        sharded store: a ShardedArray, read by slices). Checked first: the workdir must hold this
        object's run (θ0, config, K) and the store must have been recorded by it (the "train"
        store: from the fitted training set); WorkdirError otherwise, KeyError when nothing is
        recorded under ``name``."""
        from .. import storage

        self._live()
        check_name(name)
        if self._fitted() is None:
            raise KeyError(f"Daunce: nothing was fitted in {self.workdir} (no {STATE_FILE}); call fit() first")
        path = self._stored(name)
        if path is None:
            raise KeyError(f"Daunce: nothing recorded under {name!r} in {self.workdir}")
        why = self._stale(name, self._state["train"] if name == "train" else None)
        if why is not None:
            raise WorkdirError(
                f"Daunce: {why}; record it again (record(data, name) with overwrite=True) or use a new workdir"
            )
        if path.name.endswith(".index.json"):
            return storage.open_sharded(str(path))
        return storage.open(str(path))["targets"]

    def _resolve(self, data) -> str:
        if isinstance(data, str):
            return data  # checked by losses()
        ex = as_examples(data)
        fp = ex.fingerprint()
        if fp == self._fitted():
            return "train"
        name = f"data_{fp}"
        self.record(ex, name)
        return name

    def scores(
        self,
        train="train",
        test=None,
        *,
        topk: int | None = None,
        method: str | None = None,
        largest: bool = True,
        out=None,
        backend=None,
    ):
        """Attribution scores: [N_train, N_test] (positive = the training example helped), or with
        ``topk=k`` the (values, indices) [N_test, k] of the k most (``largest=False``: least)
        helpful training examples per test example. ``train``/``test``: datasets (recorded on
        demand) or names of recorded ones. ``out=PATH`` streams the full matrix to a file.
        ``method``: "covariance" or "pearson"; None takes the measured default of the head
        (covariance for classifiers, Pearson for language models; see config.SCORE_METHOD).

        Under a process group (W > 1 ranks; every rank calls this with the same arguments) the work
        is split over the train examples with daunce_fast.distributed: top-k lists are merged across
        ranks (every rank gets the full result); the full matrix needs ``out=PATH`` (an index path,
        e.g. "scores.index.json") and is written as per-rank row slabs of one sharded store.

        Stores named here are checked against this object's θ0 and options and the workdir's
        state (see :meth:`losses`): stale ones raise WorkdirError, never give old scores."""
        from ..correlation import sharded
        from ..correlation.api import correlate
        from ..correlation.api import topk as topk_of
        from ..distributed.group import is_distributed

        self._live()
        method = method or SCORE_METHOD[self.head.kind]

        if test is None:
            raise TypeError("Daunce.scores: give the test dataset (or the name of a recorded one)")
        a = self.losses(self._resolve(train))
        b = self.losses(self._resolve(test))
        if is_distributed(self.group):
            if topk is not None:
                return sharded.topk(a, b, topk, method=method, largest=largest, backend=backend, group=self.group)
            if out is None:
                raise ValueError(
                    "Daunce.scores: under a process group the full matrix is written as per-rank row "
                    "slabs: pass out=PATH (e.g. 'scores.index.json'), or call "
                    "daunce_fast.distributed.correlate(..., out=None) for this rank's rows"
                )
            return sharded.correlate(a, b, method=method, out=out, backend=backend, group=self.group)
        if topk is not None:
            return topk_of(a, b, topk, method=method, largest=largest, backend=backend)
        return correlate(a, b, method=method, out=out, backend=backend)
