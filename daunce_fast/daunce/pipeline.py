"""The DAUNCE pipeline: ``Daunce(model, ...).fit(train)`` then ``.scores(train, test)``.

Work directory (resumable: a run killed at any point and started again with the same workdir
continues from the last completed chunk and gives the same result):

    workdir/state.json                     the run's configuration and training-set fingerprint
    workdir/adapters/chunk_XXXXX.safetensors   adapter weights of each trained chunk of models
    workdir/losses/<name>.safetensors      tensor "targets" [K, N] float32: per-example targets of
                                           every model (row k = model k), streamed chunk by chunk
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import DaunceConfig
from .data import as_examples
from .heads import LMHead, LogitsHead, default_targets, is_causal_lm
from .recorder import record_chunk
from .trainer import ChunkPlan, train_chunk

STATE_VERSION = 1


def _progress(enabled: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, **kw)


class Daunce:
    """DAUNCE training-data attribution with K perturbed models trained as batched adapters.

    ``model`` (θ0) is never modified: adapters are attached to a copy. Every keyword is a field
    of :class:`DaunceConfig` (num_models, ratio, objective, rho, gamma, target, rank, alpha,
    target_modules, optimizer, lr, weight_decay, epochs, steps, batch_size, schedule,
    max_grad_norm, adapter_chunk, row_budget, antithetic, seed), plus:

    workdir:    where losses, adapters and state live (default: a new temporary directory)
    loss_fn:    per-example loss ``loss_fn(outputs, labels) -> [B]`` (default: cross-entropy,
                token-averaged for [B, T, V] outputs); the first-order term's gradient is taken
                from it by autograd at the base outputs
    forward_fn: ``forward_fn(model, inputs) -> outputs`` (default: model(*inputs) or
                model(**inputs), ``.logits`` of Hugging Face outputs)
    progress:   tqdm bars over chunks and steps
    """

    def __init__(self, model, *, workdir=None, loss_fn=None, forward_fn=None, progress: bool = False, **config):
        unknown = set(config) - set(DaunceConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Daunce: unknown option(s) {sorted(unknown)}")
        self.config = DaunceConfig(**config).validate()
        self.model = model
        head = self.config.head
        if head == "auto":
            head = "lm" if is_causal_lm(model) else "logits"
        if head == "lm":
            if loss_fn is not None or forward_fn is not None:
                raise ValueError("Daunce: loss_fn/forward_fn apply to the logits head; language models use the fused loss head")
            self.head = LMHead(self.config)
        else:
            self.head = LogitsHead(self.config, forward_fn=forward_fn, loss_fn=loss_fn)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="daunce_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self._train_fp: str | None = None
        self._chunk_model = None

    # ------------------------------------------------------------------ layout
    @property
    def num_models(self) -> int:
        return int(self.config.num_models)

    @property
    def rank(self):
        """The adapters' rank: the configured one, else "full" for classifiers and 64 for LMs."""
        if self.config.rank is not None:
            return self.config.rank
        return "full" if self.head.kind == "logits" else 64

    def chunk_size(self) -> int:
        cfg = self.config
        k_c = cfg.adapter_chunk or max(1, cfg.row_budget // cfg.batch_size)
        return max(1, min(self.num_models, k_c))

    def chunks(self) -> list[tuple[int, list[int]]]:
        kc, K = self.chunk_size(), self.num_models
        return [(c, list(range(k0, min(K, k0 + kc)))) for c, k0 in enumerate(range(0, K, kc))]

    def loss_path(self, name: str) -> Path:
        return self.workdir / "losses" / f"{name}.safetensors"

    def _adapter_path(self, c: int) -> Path:
        return self.workdir / "adapters" / f"chunk_{c:05d}.safetensors"

    # ------------------------------------------------------------------ state
    def _check_state(self, train_fp: str) -> None:
        path = self.workdir / "state.json"
        state = {"version": STATE_VERSION, "config": self.config.training_fingerprint(),
                 "num_models": self.num_models, "chunk_size": self.chunk_size(), "train": train_fp}
        if path.exists():
            old = json.loads(path.read_text())
            diff = [k for k in state if old.get(k) != state[k]]
            if diff:
                raise ValueError(f"Daunce: workdir {self.workdir} holds a different run (differs in: {', '.join(diff)}); "
                                 "use a new workdir or remove it")
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, path)
        self._train_fp = train_fp

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
        params = lora.attach(model, num_adapters=len(ids), rank=rank, alpha=alpha, target_modules=targets,
                             seed=cfg.seed, adapter_ids=ids)
        params = [p for p in params if p.requires_grad]
        self._chunk_model = (model, params, len(ids))
        return model, params

    def _save_adapters(self, c: int, model) -> None:
        from .. import lora, storage

        state = {k: v.detach().cpu().contiguous() for k, v in lora.adapter_state(model).items()}
        path = self._adapter_path(c)
        path.parent.mkdir(parents=True, exist_ok=True)
        with storage.create(str(path), {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}) as w:
            for k, v in state.items():
                w[k][...] = v.numpy()

    def _load_adapters(self, c: int, model) -> None:
        from .. import lora, storage

        with storage.open(str(self._adapter_path(c))) as r:
            state = {k: torch.from_numpy(np.array(r[k])) for k in r.names()}
        lora.load_adapter_state(model, state)

    def _open_store(self, name: str, n: int, fingerprint: str):
        from .. import storage

        meta = {"daunce_fast.target": self.config.target, "daunce_fast.dataset": fingerprint,
                "daunce_fast.config": json.dumps(self.config.training_fingerprint(), sort_keys=True)}
        path = self.loss_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return storage.create(str(path), {"targets": ((self.num_models, n), "float32")}, metadata=meta, resume=True)

    def _store_complete(self, name: str, fingerprint: str) -> bool:
        from .. import storage

        path = self.loss_path(name)
        if not path.exists():
            return False
        with storage.open(str(path)) as r:
            if r.metadata.get("daunce_fast.dataset") != fingerprint or r.shape("targets")[0] != self.num_models:
                raise ValueError(f"Daunce: {path} holds targets of another dataset or run; remove it or use another name")
        return True

    # ------------------------------------------------------------------ public API
    def fit(self, train, *, record: dict | None = None) -> "Daunce":
        """Train the K perturbed models on ``train`` chunk by chunk and record the [K, N] targets of
        ``train`` (name "train") and of each dataset in ``record`` ({name: dataset}) right after each
        chunk trains. Resumes from the last completed chunk of an interrupted run."""
        ex = as_examples(train)
        fp = ex.fingerprint()
        self._check_state(fp)
        sets = {"train": (ex, fp)}
        for name, data in (record or {}).items():
            e = as_examples(data)
            sets[name] = (e, e.fingerprint())
        pending = {n: v for n, v in sets.items() if not self._store_complete(n, v[1])}
        if not pending:
            return self
        base = self.head.base_tables(self.model, ex, self.config.row_budget)
        writers = {n: self._open_store(n, len(e), f) for n, (e, f) in pending.items()}
        chunks = self.chunks()
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
                            plan = ChunkPlan(self.config, ids, len(ex))
                            with _progress(self.progress, total=plan.total_steps, desc=f"chunk {c}", unit="step",
                                           leave=False) as steps:
                                train_chunk(model, params, ex, plan, base, self.head, progress=steps)
                            self._save_adapters(c, model)
                        for n in todo:
                            rows = record_chunk(model, pending[n][0], len(ids), self.head,
                                                row_budget=self.config.row_budget)
                            writers[n]["targets"][ids[0]:ids[-1] + 1] = rows
                            writers[n].mark_done(key)
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
        by chunk from the workdir). Returns the loss file's path."""
        if self._train_fp is None:
            raise RuntimeError("Daunce.record: call fit() first (it trains the models)")
        ex = as_examples(data)
        fp = ex.fingerprint()
        if self._store_complete(name, fp):
            return self.loss_path(name)
        w = self._open_store(name, len(ex), fp)
        for c, ids in self.chunks():
            key = f"chunk{c}"
            if w.is_done(key):
                continue
            if not self._adapter_path(c).exists():
                raise RuntimeError(f"Daunce.record: adapters of chunk {c} are missing; run fit() to completion first")
            model, _ = self._model_for(ids)
            self._load_adapters(c, model)
            w["targets"][ids[0]:ids[-1] + 1] = record_chunk(model, ex, len(ids), self.head,
                                                            row_budget=self.config.row_budget)
            w.mark_done(key)
        w.close()
        return self.loss_path(name)

    def losses(self, name: str = "train") -> np.ndarray:
        """Read-only memory-mapped [K, N] targets recorded under ``name``."""
        from .. import storage

        return storage.open(str(self.loss_path(name)))["targets"]

    def _resolve(self, data) -> str:
        if isinstance(data, str):
            if not self.loss_path(data).exists():
                raise KeyError(f"Daunce: nothing recorded under {data!r} in {self.workdir}")
            return data
        ex = as_examples(data)
        fp = ex.fingerprint()
        if fp == self._train_fp:
            return "train"
        name = f"data_{fp}"
        self.record(ex, name)
        return name

    def scores(self, train="train", test=None, *, topk: int | None = None, method: str = "covariance",
               largest: bool = True, out=None, backend=None):
        """Attribution scores: [N_train, N_test] (positive = the training example helped), or with
        ``topk=k`` the (values, indices) [N_test, k] of the k most (``largest=False``: least)
        helpful training examples per test example. ``train``/``test``: datasets (recorded on
        demand) or names of recorded ones. ``out=PATH`` streams the full matrix to a file."""
        import daunce_fast as df

        if test is None:
            raise TypeError("Daunce.scores: give the test dataset (or the name of a recorded one)")
        a = self.losses(self._resolve(train))
        b = self.losses(self._resolve(test))
        if topk is not None:
            return df.topk(a, b, topk, method=method, largest=largest, backend=backend)
        return df.correlate(a, b, method=method, out=out, backend=backend)
