"""Baseline attributors for the LDS studies, each returning scores [N_train, N_test] (positive =
helpful, i.e. training on i lowers the loss of test example j) and its wall time.

- ``trak``: dattri's TRAKAttributor on θ0 (1 checkpoint) or θ0 plus extra full-data models
  (ensemble), with the function of dattri's own TRAK examples (the log-odds margin
  f = log p/(1-p) of the correct class, for train and test gradients; computed stably) and its `regularization`
  (damping added to ΦᵀΦ). Sign: score = φ_testᵀ(ΦᵀΦ+λI)⁻¹φ_train·(1-p_train); both gradients are of
  the same higher-is-better f, so positive = helpful. No flip.
- ``if_dattri``: dattri's IFAttributorExplicit (explicit Hessian of the mean training CE, with
  `regularization` λI). Score = g_trainᵀ(H+λI)⁻¹g_test of the CE loss: upweighting i moves the test
  loss by -g_testᵀH⁻¹g_i, so positive = helpful. No flip. torch.func.hessian's forward-over-reverse
  materialises P tangents over the whole batch, so it is only run when P·N is small (breast_cancer).
- ``ExactIF``: the same quantity computed here (Hessian by P/chunk batched HVPs, one eigh), so that
  a whole damping grid costs one factorisation; checked against ``if_dattri`` in the tests.
- ``grad_dot``: g_trainᵀg_test (CE gradients at θ0), positive = helpful.

Every function takes a ground-truth dict of ``daunce_fast.evaluation.groundtruth.build`` or
``groundtruth_cnn.build`` (θ0, extra checkpoints, recipe; bench/quality/lds_data.py and
lds_cnn.py cache them); full state dicts carry BatchNorm's running statistics to dattri. dattri is imported inside ``trak`` and
``if_dattri`` only: this module imports without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from . import groundtruth


def _builder(gt: dict):
    """The module that built ``gt``: groundtruth (MLPs) or groundtruth_cnn (``recipe["arch"] == "cnn"``)."""
    if gt["recipe"].get("arch") == "cnn":
        from . import groundtruth_cnn

        return groundtruth_cnn
    return groundtruth


def load_task(gt: dict):
    """The task (data, split) of a ground truth of either builder."""
    return _builder(gt).load_task(gt)


def model_from_state(gt: dict, state: dict | None = None):
    """θ0 (or ``state``) as a model of the ground truth's architecture (an MLP or the CNN, eval mode)."""
    return _builder(gt).model_from_state(gt, state)


def _loaders(task):
    tr = TensorDataset(task.x_train, task.y_train)
    te = TensorDataset(task.x_test, task.y_test)
    # one batch each: dattri's explicit IF inverts one Hessian per train batch, and TRAK is exact
    return (DataLoader(tr, batch_size=len(tr), shuffle=False), DataLoader(te, batch_size=len(te), shuffle=False))


def _as_batch(x, y):
    """dattri hands single examples without a batch axis (TRAK) or with one (IF): accept both
    (a single example has a 0-d label, whatever the shape of its input)."""
    return (x.unsqueeze(0), y.unsqueeze(0)) if y.dim() == 0 else (x, y)


def trak(
    gt: dict, *, num_ckpts: int = 1, regularization: float = 0.0, proj_dim: int = 512, proj_seed: int = 0
) -> tuple[torch.Tensor, float]:
    """dattri TRAK with θ0 (+ num_ckpts-1 extra full-data models). Returns (scores [N, M], seconds)."""
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    task = load_task(gt)
    model = model_from_state(gt)
    ckpts = [gt["theta0"], *gt["extra_ckpts"]][:num_ckpts]
    if len(ckpts) < num_ckpts:
        raise ValueError(f"only {len(ckpts)} checkpoints cached; rebuild with --extra-ckpts {num_ckpts - 1}")

    def margin(params, data):
        # log-odds of the correct class, log p/(1-p), the function of dattri's TRAK examples, but
        # written as z_y - logsumexp(z_{c != y}): dattri's logp - log(1 - exp(logp)) is -inf/NaN once
        # p rounds to 1 in fp32, and dattri's nan_to_num then zeroes that test example's scores
        # (a third of breast_cancer's test set), which silently drops it from the LDS mean.
        x, y = _as_batch(*data)
        z = torch.func.functional_call(model, params, x)
        zy = z.gather(1, y[:, None]).squeeze(1)
        others = z.masked_fill(torch.arange(z.shape[1]) == y[:, None], float("-inf"))
        return (zy - torch.logsumexp(others, dim=1)).sum()

    def p_correct(params, data):
        x, y = _as_batch(*data)
        return torch.exp(-F.cross_entropy(torch.func.functional_call(model, params, x), y))

    train_loader, test_loader = _loaders(task)
    t0 = time.perf_counter()
    att = TRAKAttributor(
        task=AttributionTask(loss_func=margin, model=model, checkpoints=ckpts),
        correct_probability_func=p_correct,
        device="cpu",
        regularization=regularization,
        projector_kwargs={"proj_dim": proj_dim, "proj_seed": proj_seed, "device": "cpu"},
    )
    with torch.no_grad():
        att.cache(train_loader)
        scores = att.attribute(test_loader)
    return scores.detach().cpu(), time.perf_counter() - t0


def _ce(model):
    def f(params, data):
        x, y = _as_batch(*data)
        return F.cross_entropy(torch.func.functional_call(model, params, x), y)

    return f


def if_dattri(gt: dict, *, regularization: float = 1e-3) -> tuple[torch.Tensor, float]:
    """dattri IFAttributorExplicit on θ0. Returns (scores [N, M], seconds)."""
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask

    task = load_task(gt)
    model = model_from_state(gt)
    train_loader, test_loader = _loaders(task)
    t0 = time.perf_counter()
    att = IFAttributorExplicit(
        task=AttributionTask(loss_func=_ce(model), model=model, checkpoints=gt["theta0"]),
        device="cpu",
        regularization=regularization,
    )
    att.cache(train_loader)
    with torch.no_grad():
        scores = att.attribute(train_loader, test_loader)
    return scores.detach().cpu(), time.perf_counter() - t0


def per_example_grads(model, x, y, params=None) -> torch.Tensor:
    """[B, P] gradients of each example's CE loss w.r.t. all parameters (flattened in
    named_parameters order)."""
    params = params or {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, p, xi[None]), yi[None])

    g = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[k].reshape(len(x), -1) for k in params], dim=1)


def hessian(model, x, y, chunk: int = 256) -> torch.Tensor:
    """[P, P] Hessian of the mean CE over (x, y) at the model's parameters, by batched HVPs
    (forward-over-reverse, `chunk` directions at a time to bound memory)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    P = flat0.numel()

    def loss(flat):
        ps = {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, ps, x), y)

    grad_fn = torch.func.grad(loss)

    def hvp(v):
        return torch.func.jvp(grad_fn, (flat0,), (v,))[1]

    eye = torch.eye(P, dtype=flat0.dtype)
    rows = [torch.func.vmap(hvp)(eye[s : s + chunk]) for s in range(0, P, chunk)]
    h = torch.cat(rows)
    return (h + h.T) / 2


class ExactIF:
    """g_trainᵀ(H + λI)⁻¹g_test at θ0 for any λ after one eigendecomposition of H (float64).

    Negative eigenvalues (θ0 is not an exact minimum) stay as they are, as in dattri's explicit
    solver; λ must keep H + λI away from singular.
    The Hessian costs P batched HVPs over the training set (about 10 minutes for the digits MLP,
    P = 8970, on one shared core), so its eigendecomposition is cached in ``cache`` (a .pt file,
    reused only if θ0 is identical) together with the seconds it took, which ``scores`` reports.
    """

    def __init__(self, gt: dict, cache: str | Path | None = None):
        task = load_task(gt)
        model = model_from_state(gt)
        t0, c0 = time.perf_counter(), time.process_time()
        self.g_train = per_example_grads(model, task.x_train, task.y_train).double()
        self.g_test = per_example_grads(model, task.x_test, task.y_test).double()
        grads_s, grads_cpu = time.perf_counter() - t0, time.process_time() - c0
        hit = None
        if cache is not None and Path(cache).exists():
            c = torch.load(cache, weights_only=False)
            if all(torch.equal(c["theta0"][k], v) for k, v in gt["theta0"].items()):
                hit = c
        if hit is None:
            t1, c1 = time.perf_counter(), time.process_time()
            h = hessian(model, task.x_train, task.y_train).double()
            evals, evecs = torch.linalg.eigh(h)
            hit = {
                "theta0": gt["theta0"],
                "evals": evals,
                "evecs": evecs.float(),
                "seconds": time.perf_counter() - t1,
                "cpu_seconds": time.process_time() - c1,
            }
            if cache is not None:
                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                torch.save(hit, cache)
        self.evals, self.evecs = hit["evals"], hit["evecs"].double()
        t2, c2 = time.perf_counter(), time.process_time()
        self.a = self.g_train @ self.evecs  # [N, P]
        self.b = self.g_test @ self.evecs  # [M, P]
        self.setup_s = grads_s + hit["seconds"] + time.perf_counter() - t2
        # CPU seconds of the same work (robust to other processes sharing the cores)
        self.setup_cpu_s = grads_cpu + hit.get("cpu_seconds", float("nan")) + time.process_time() - c2
        self.last_cpu_s = self.setup_cpu_s

    def scores(self, damping: float) -> tuple[torch.Tensor, float]:
        """(scores [N, M] float64, seconds: gradients + Hessian + eigh (as first measured) + this product)."""
        t0, c0 = time.perf_counter(), time.process_time()
        s = (self.a / (self.evals + damping)) @ self.b.T
        self.last_cpu_s = self.setup_cpu_s + time.process_time() - c0
        return s, self.setup_s + time.perf_counter() - t0


def grad_dot(gt: dict) -> tuple[torch.Tensor, float]:
    """Gradient dot product at θ0 (no curvature). Returns (scores [N, M], seconds)."""
    task = load_task(gt)
    model = model_from_state(gt)
    t0 = time.perf_counter()
    s = per_example_grads(model, task.x_train, task.y_train) @ per_example_grads(model, task.x_test, task.y_test).T
    return s, time.perf_counter() - t0
