"""Attribution methods compared by bench/quality/lm_backdoor.py, each returning scores [N_train, N_query]
(positive = the training pair helped the query, i.e. lowered its loss)."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch


def random_scores(n_train: int, n_query: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_train, n_query))


def _example_grad(model, data, i: int, params) -> torch.Tensor:
    """Flattened gradient of row i's token-averaged response loss w.r.t. ``params``."""
    out = model(
        input_ids=data.input_ids[i : i + 1],
        attention_mask=data.attention_mask[i : i + 1],
        labels=data.labels[i : i + 1],
    )
    gs = torch.autograd.grad(out.loss, params)
    return torch.cat([g.reshape(-1) for g in gs])


def graddot_scores(model, train, queries, *, only: str | None = None) -> np.ndarray:
    """Grad-Dot: <∇ℓ_query(θ0), ∇ℓ_train(θ0)> over every parameter (``only="mlp"``: the MLP
    projections, the weights DAUNCE's default adapters sit on). One backward per row; the query
    gradients are kept, training gradients are streamed."""
    names = [n for n, p in model.named_parameters() if only is None or f".{only}." in n]
    params = [p for n, p in model.named_parameters() if n in names]
    model.eval()
    gq = torch.stack([_example_grad(model, queries, j, params) for j in range(len(queries))])  # [Q, P]
    out = np.empty((len(train), len(queries)))
    for i in range(len(train)):
        out[i] = (gq @ _example_grad(model, train, i, params)).numpy()
    return out


def daunce_scores(model, train, queries: dict, *, methods=("pearson", "covariance"), workdir=None, **opts):
    """DAUNCE with options ``opts``: fit on ``train`` recording every query set, then scores per set.
    Returns ({method: {name: scores [N_train, N_q]}}, seconds of fit, seconds of scoring)."""
    from daunce_fast.daunce import Daunce

    wd = workdir or tempfile.mkdtemp(prefix="lm_backdoor_")
    t0 = time.perf_counter()
    d = Daunce(model, workdir=wd, **opts)
    d.fit(train, record=queries)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = {m: {n: np.asarray(d.scores("train", n, method=m), dtype=np.float64) for n in queries} for m in methods}
    return out, t_fit, time.perf_counter() - t0
