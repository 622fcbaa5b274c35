"""A dattri-style attributor: ``DaunceAttributor(task=...)`` with ``cache(train_loader)`` and
``attribute(train_loader, test_loader) -> Tensor [N_train, N_test]`` (positive = the training
example helped the test example), so ``dattri.metric.lds`` can score DAUNCE like any dattri
attributor. dattri itself is not imported here; any object with ``get_model()`` works as task.
"""

from __future__ import annotations

import torch


class DaunceAttributor:
    """DAUNCE behind dattri's attributor interface.

    task:     a ``dattri.task.AttributionTask`` (its model, at its first checkpoint, is θ0), or None
              with ``model=`` given directly.
    model:    θ0 when no task is given.
    device:   where the scores are returned.
    **daunce: options of :class:`daunce_fast.Daunce` (num_models, objective, rho, epochs, workdir,
              loss_fn, ...). ``method`` ("covariance" or "pearson") chooses the score.
    """

    def __init__(self, task=None, model=None, device: str = "cpu", method: str = "covariance", **daunce):
        if task is None and model is None:
            raise ValueError("DaunceAttributor: give task= (a dattri AttributionTask) or model=")
        if model is None:
            if hasattr(task, "_load_checkpoints"):
                task._load_checkpoints(0)
            model = task.get_model()
        self.model, self.device, self.method = model, device, method
        self.daunce_kwargs = daunce
        self._daunce = None

    def _loader_dataset(self, loader):
        from torch.utils.data import RandomSampler

        if isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.sampler, RandomSampler):
            raise ValueError("DaunceAttributor: the data loaders must not shuffle (scores follow the loader's order)")
        return loader

    def close(self) -> None:
        """Close the underlying :class:`Daunce` (deletes its temporary workdir when no ``workdir=``
        was given; it is also deleted when this object is garbage-collected or at exit)."""
        if self._daunce is not None:
            self._daunce.close()
            self._daunce = None

    def cache(self, full_train_dataloader) -> None:
        """Train the K perturbed models on the training data and record their losses."""
        from ..daunce import Daunce

        self.close()  # a second cache() replaces the first run (and its temporary workdir)
        self._daunce = Daunce(self.model, **self.daunce_kwargs)
        self._daunce.fit(self._loader_dataset(full_train_dataloader))

    def attribute(self, train_dataloader, test_dataloader) -> torch.Tensor:
        """Scores [N_train, N_test] on ``device``; calls :meth:`cache` first if it was not called."""
        if self._daunce is None:
            self.cache(train_dataloader)
        s = self._daunce.scores(
            self._loader_dataset(train_dataloader), self._loader_dataset(test_dataloader), method=self.method
        )
        return torch.as_tensor(s).to(self.device)
