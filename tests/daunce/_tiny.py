"""A tiny classification task for pipeline tests (a slice of digits, a small MLP)."""

import torch

from daunce_fast.demos.tasks import load_tabular, mlp, train_classifier

_CACHE = {}


def tiny_task(n_train=240, n_test=40):
    key = (n_train, n_test)
    if key not in _CACHE:
        t = load_tabular("digits", seed=0)
        model = train_classifier(
            mlp(64, 10, hidden=16, seed=0), t.x_train[:n_train], t.y_train[:n_train], epochs=15, lr=1e-2, seed=0
        )
        train = torch.utils.data.TensorDataset(t.x_train[:n_train], t.y_train[:n_train])
        test = torch.utils.data.TensorDataset(t.x_test[:n_test], t.y_test[:n_test])
        _CACHE[key] = (model, train, test)
    return _CACHE[key]


OPTS = dict(num_models=8, epochs=1, batch_size=32, lr=1e-3, seed=3)
