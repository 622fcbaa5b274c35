"""Datasets as the pipeline sees them: a tuple of tensors gathered once, indexed by example.

Accepted: ``torch.utils.data.TensorDataset``; any map-style ``Dataset`` whose items are tuples
``(*inputs, label)`` or dicts (label under "labels", "label" or "y"; the other keys are passed to
the model as keyword arguments); a ``DataLoader`` over such items (iterated once, in order, so it
must not shuffle). Items are stacked once into tensors so that the K models' minibatches are
gathered with one index operation per step instead of K * batch Python item lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LABEL_KEYS = ("labels", "label", "y")


@dataclass
class Examples:
    inputs: tuple | dict  # tensors with leading dimension N
    labels: torch.Tensor  # [N] or [N, T]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor, device=None):
        """(inputs, labels) of the examples ``idx`` (any shape of int64 index; flattened)."""
        idx = idx.reshape(-1)

        def rows(v):
            # index_select, not v[idx]: advanced indexing on the CPU is ~3x slower for the per-step
            # [K*b] row gathers (it goes through the generic index kernel)
            t = v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor) else v[idx]
            return t.to(device) if device else t

        if isinstance(self.inputs, dict):
            inp = {k: rows(v) for k, v in self.inputs.items()}
        else:
            inp = tuple(rows(v) for v in self.inputs)
        return inp, rows(self.labels)

    def fingerprint(self) -> str:
        """Content digest (32 hex characters) of every tensor in full: the input names (dict
        inputs) or count (tuple inputs), then each input tensor's and the labels' dtype, shape and
        every element, streamed in chunks by storage.fingerprint.ContentHash (no Python loop per
        example). Two datasets share it only when their gathered tensors are identical."""
        from ..storage.fingerprint import ContentHash

        h = ContentHash("daunce.dataset/v2")
        if isinstance(self.inputs, dict):
            names = sorted(self.inputs)
            h.update_json({"inputs": names})
            tensors = [self.inputs[k] for k in names]
        else:
            h.update_json({"inputs": len(self.inputs)})
            tensors = list(self.inputs)
        for t in [*tensors, self.labels]:
            h.update_array(t)
        return h.hexdigest()


def _split_item(item):
    if isinstance(item, dict):
        key = next((k for k in LABEL_KEYS if k in item), None)
        if key is None:
            raise ValueError(f"dataset items are dicts without a label key (one of {LABEL_KEYS})")
        return {k: v for k, v in item.items() if k != key}, item[key]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return tuple(item[:-1]), item[-1]
    raise ValueError("dataset items must be (inputs..., label) tuples or dicts with a label key")


def _stack(values):
    return torch.stack([torch.as_tensor(v) for v in values])


def as_examples(data) -> Examples:
    """Gather a dataset (see module doc) into :class:`Examples`."""
    if isinstance(data, Examples):
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        *inp, lab = data.tensors
        return Examples(tuple(inp), lab)
    if isinstance(data, torch.utils.data.DataLoader):
        parts = [_split_item(b) for b in data]
        if not parts:
            raise ValueError("empty DataLoader")
        inp0 = parts[0][0]
        labels = torch.cat([torch.as_tensor(p[1]) for p in parts])
        if isinstance(inp0, dict):
            return Examples({k: torch.cat([p[0][k] for p in parts]) for k in inp0}, labels)
        return Examples(tuple(torch.cat([p[0][i] for p in parts]) for i in range(len(inp0))), labels)
    if isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data) and len(data) >= 2:
        return Examples(tuple(data[:-1]), data[-1])
    n = len(data)
    if n == 0:
        raise ValueError("empty dataset")
    items = [_split_item(data[i]) for i in range(n)]
    if isinstance(items[0][0], dict):
        inputs = {k: _stack([it[0][k] for it in items]) for k in items[0][0]}
    else:
        inputs = tuple(_stack([it[0][i] for it in items]) for i in range(len(items[0][0])))
    return Examples(inputs, _stack([it[1] for it in items]))


def num_rows(inputs) -> int:
    """Leading size of the first input tensor (the examples in a batch)."""
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    return int(next(v for v in values if isinstance(v, torch.Tensor)).shape[0])


def model_outputs(out, rows: int, source: str = "the model") -> torch.Tensor:
    """The output tensor of a forward pass, by these rules (docs/pipeline.md#forward):

    - a tensor is taken as it is;
    - an object with a ``.logits`` attribute (Hugging Face ``ModelOutput``) gives ``.logits``;
    - a dict gives its ``"logits"`` entry;
    - a tuple or list gives its first element (nanoGPT's ``(logits, loss)``, ``return_dict=False``).

    The result must be a tensor with ``rows`` (the examples' count) as leading size; otherwise
    ValueError naming what was returned and saying to pass ``forward_fn``."""
    got = out
    if not isinstance(out, torch.Tensor):
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, dict):
            out = out.get("logits")
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != rows:
        what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        kind = type(got).__name__
        raise ValueError(
            f"Daunce: {source} returned {kind if kind != 'Tensor' else 'a tensor'} from which the output "
            f"read was {what}; the pipeline needs the outputs of the {rows} examples as one tensor "
            f"[{rows}, ...] (e.g. logits [{rows}, classes]). Pass forward_fn=lambda model, inputs: ... "
            "returning that tensor"
        )
    return out


def call_model(model, inputs):
    """Run the model on gathered inputs (``model(**inputs)`` for dict inputs, else ``model(*inputs)``)
    and return its outputs by the rules of :func:`model_outputs`."""
    out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return model_outputs(out, num_rows(inputs))


def repeat_for_models(inputs, k: int):
    """Stack the same examples for k models, adapter-major: [k * m, ...]."""
    rep = lambda t: t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])  # noqa: E731
    if isinstance(inputs, dict):
        return {n: rep(v) for n, v in inputs.items()}
    return tuple(rep(v) for v in inputs)
