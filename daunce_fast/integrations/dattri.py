"""DAUNCE behind dattri's attributor interface (docs/pipeline.md#dattri).

``DaunceAttributor`` is a subclass of ``dattri.algorithm.base.BaseAttributor`` when dattri is
installed (a plain class otherwise): this module imports without dattri, and dattri is imported on
first access of ``DaunceAttributor``. Scores are ``[N_train, N_test]``, positive = the training
example helped the test example, so ``dattri.metric.lds`` scores DAUNCE like any dattri attributor.

Both of dattri's call conventions work:

    att.attribute(train_loader, test_loader)       as its influence-function attributors (fits on
                                                   train_loader unless cache() was called)
    att.cache(train_loader); att.attribute(test_loader)
                                                   as its TRAK attributor (also
                                                   ``attribute(test_loader, train_dataloader=...)``
                                                   for a subset of the cached training set)
"""

from __future__ import annotations

from typing import Any

import torch


def task_loss_fn(task, num_inputs: int = 1):
    """``loss_fn(outputs [B, ...], labels [B, ...]) -> [B]`` computed by the task's own loss function.

    dattri's ``AttributionTask`` exposes the loss the user gave as ``task.original_loss_func(params,
    data)``: it runs ``torch.func.functional_call(task.model, params, inputs)`` and returns the loss
    of ``data = (*inputs, label)``, called by dattri on one example at a time (tensors with a
    leading 1). Here it is called the same way per example (``torch.vmap`` over the rows, a Python
    loop when the function cannot be vmapped), with ``task.model``'s forward replaced for the call
    by one that returns that example's outputs ``z[i:i+1]`` (the copies' outputs), and zero tensors
    as the ``num_inputs`` inputs (the forward ignores them). ValueError when the loss function never
    calls ``task.model`` (pass ``loss_fn=`` instead).
    """
    model = task.model
    loss = getattr(task, "original_loss_func", None) or task.loss_func
    params = {k: p.detach() for k, p in model.named_parameters()}
    placeholders = tuple(torch.zeros(1) for _ in range(int(num_inputs)))

    def one(z_i: torch.Tensor, y_i: torch.Tensor, calls: list) -> torch.Tensor:
        def forward(*args, **kwargs):
            calls.append(1)
            return z_i.unsqueeze(0)

        model.forward = forward
        try:
            return loss(params, (*placeholders, y_i.unsqueeze(0))).reshape(())
        finally:
            del model.forward

    def loss_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls: list = []
        try:
            out = torch.vmap(lambda zi, yi: one(zi, yi, calls))(z, y)
        except Exception:  # e.g. .item() or data-dependent control flow: one call per example
            calls.clear()
            try:
                out = torch.stack([one(z[i], y[i], calls) for i in range(z.shape[0])])
            except Exception as exc:
                if calls:
                    raise
                raise _not_the_model() from exc
        if not calls:
            raise _not_the_model()
        return out.to(z.dtype)

    return loss_fn


def _not_the_model() -> ValueError:
    return ValueError(
        "DaunceAttributor: the task's loss_func does not run task.model (through "
        "torch.func.functional_call(task.model, params, ...)), so its loss of the copies' outputs "
        "is unknown; pass loss_fn=lambda outputs, labels: <per-example losses [B]>"
    )


def _dataset_of(loader):
    from torch.utils.data import DataLoader, RandomSampler

    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
        raise ValueError("DaunceAttributor: the data loaders must not shuffle (scores follow the loader's order)")
    return loader


def _make_class():
    try:
        from dattri.algorithm.base import BaseAttributor as base
    except ImportError:  # dattri is optional: the same class without its base
        base = object

    class DaunceAttributor(base):
        """DAUNCE behind dattri's attributor interface.

        task:     a ``dattri.task.AttributionTask``: its model at checkpoint 0 is θ0, and its loss
                  function is the training loss of the copies and the recorded target (see
                  :func:`task_loss_fn`; DAUNCE's perturbation is then "xi", as with any custom loss),
                  unless ``loss_fn=`` is given. Or None with ``model=`` given directly (the built-in
                  cross-entropy, perturbation "hessian").
        model:    θ0 when no task is given.
        device:   where the scores are returned.
        method:   "covariance" or "pearson".
        **daunce: options of :class:`daunce_fast.Daunce` (num_models, objective, rho, epochs,
                  workdir, loss_fn, forward_fn, batchnorm, dropout, ...).
        """

        def __init__(self, task=None, model=None, device: str = "cpu", method: str = "covariance", **daunce):
            if task is None and model is None:
                raise ValueError("DaunceAttributor: give task= (a dattri AttributionTask) or model=")
            if model is None:
                if hasattr(task, "_load_checkpoints"):
                    task._load_checkpoints(0)
                model = task.get_model()
            self.task, self.model, self.device, self.method = task, model, device, method
            self.daunce_kwargs = daunce
            self._daunce: Any = None

        def close(self) -> None:
            """Close the underlying :class:`Daunce` (deletes its temporary workdir when no
            ``workdir=`` was given; it is also deleted on garbage collection or at exit)."""
            if self._daunce is not None:
                self._daunce.close()
                self._daunce = None

        def _options(self, examples) -> dict:
            opts = dict(self.daunce_kwargs)
            if self.task is not None and "loss_fn" not in opts:
                n_in = len(examples.inputs) if isinstance(examples.inputs, tuple) else 1
                opts["loss_fn"] = task_loss_fn(self.task, n_in)
            return opts

        def cache(self, full_train_dataloader) -> None:
            """Train the K perturbed models on the full training data and record their losses."""
            from ..daunce import Daunce
            from ..daunce.data import as_examples

            self.close()  # a second cache() replaces the first run (and its temporary workdir)
            ex = as_examples(_dataset_of(full_train_dataloader))
            self._daunce = Daunce(self.model, **self._options(ex))
            self._daunce.fit(ex)

        def attribute(self, *loaders, train_dataloader=None, test_dataloader=None) -> torch.Tensor:
            """Scores ``[N_train, N_test]`` on ``device``.

            ``attribute(train_loader, test_loader)``: fits on ``train_loader`` first unless
            :meth:`cache` was called (then ``train_loader`` may be any part of the cached set).
            ``attribute(test_loader)`` after ``cache(train_loader)``: the cached training set.
            Keywords ``train_dataloader=``/``test_dataloader=`` name either; two positional
            loaders are (train, test), as in dattri's ``BaseAttributor``."""
            if len(loaders) > 2:
                raise TypeError(f"DaunceAttributor.attribute: at most two loaders, got {len(loaders)}")
            if len(loaders) == 2:
                if train_dataloader is not None or test_dataloader is not None:
                    raise TypeError("DaunceAttributor.attribute: loaders given both by position and by keyword")
                train_dataloader, test_dataloader = loaders
            elif len(loaders) == 1:
                if test_dataloader is not None:
                    if train_dataloader is not None:
                        raise TypeError("DaunceAttributor.attribute: loaders given both by position and by keyword")
                    train_dataloader = loaders[0]
                else:
                    test_dataloader = loaders[0]
            if test_dataloader is None:
                raise TypeError("DaunceAttributor.attribute: give the test loader")
            if self._daunce is None:
                if train_dataloader is None:
                    raise ValueError(
                        "DaunceAttributor.attribute(test_loader) needs cache(train_loader) first; or call "
                        "attribute(train_loader, test_loader)"
                    )
                self.cache(train_dataloader)
            train = "train" if train_dataloader is None else _dataset_of(train_dataloader)
            s = self._daunce.scores(train, _dataset_of(test_dataloader), method=self.method)
            return torch.as_tensor(s).to(self.device)

    DaunceAttributor.__module__ = __name__
    return DaunceAttributor


def __getattr__(name: str):
    if name == "DaunceAttributor":
        cls = _make_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
