"""Attach K perturbed copies to any torch model (every registered layer kind, see kinds.py), detach them,
re-initialise / checkpoint them, summarise them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Optional, Union

import torch
from torch import nn

from .copies import CopyLayer, copy_class_for
from .fallback import FallbackCopies, infer_batch_dim
from .norm import make_copies_independent

_STATE = "_daunce_lora_attached"  # model attribute: the base parameters' original requires_grad flags


def matches_target(name: str, target_modules: Union[str, Sequence[str]]) -> bool:
    """PEFT's rule: a regex string must match the whole module name; a list entry must equal the
    name or be its last dotted component(s) (``'q_proj'`` matches ``'model.layers.0.self_attn.q_proj'``)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def lora_modules(model: nn.Module) -> list[tuple[str, CopyLayer]]:
    """``(name in the original model, module)`` of every attached copy layer (every kind: linear,
    conv, embedding, norm, fallback), in model order. The root itself when it was wrapped."""
    return [(m.name, m) for m in model.modules() if isinstance(m, CopyLayer)]


copy_layers = lora_modules


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All adapter parameters (each with leading dimension K), in model order."""
    return [p for _, m in lora_modules(model) for p in m.adapter_parameters()]


def summary(model: nn.Module) -> list[dict]:
    """One row per attached copy layer, in model order: :meth:`CopyLayer.describe`, i.e.
    ``{"name", "type", "kind", "params_per_copy", "bytes_per_copy"}`` (kind e.g. ``"lora r=8"``,
    ``"full"``, ``"affine"``, ``"affine (batchnorm=eval)"``, ``"stats (batchnorm=eval)"``,
    ``"fallback"``, ``"fallback loop"``; the last is known after the first forward)."""
    return [m.describe() for _, m in lora_modules(model)]


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _wrappable_types() -> str:
    return (
        "nn.Linear, transformers Conv1D, nn.Conv1d/2d/3d, nn.Embedding, nn.LayerNorm/RMSNorm/GroupNorm/"
        "BatchNorm*/InstanceNorm* with affine parameters, and (fallback=True) any other module with parameters"
    )


_SEQ_FIRST_TYPES = (
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def _whole_only(module: nn.Module) -> bool:
    """Modules whose parts cannot be wrapped one by one: ``nn.MultiheadAttention`` (its forward
    reads ``out_proj.weight`` without calling ``out_proj``) and torch's transformer modules in the
    sequence-first layout (``batch_first=False``: inside them the batch is on dimension 1, while
    the batched copy layers split dimension 0)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return isinstance(module, _SEQ_FIRST_TYPES) and infer_batch_dim(module) == 1


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def select_targets(
    model: nn.Module, target_modules: Union[str, Sequence[str]], fallback: bool = True
) -> list[tuple[str, nn.Module, Callable[..., CopyLayer]]]:
    """``(name, module, copy class)`` of the modules :func:`attach` wraps, in model order.

    Matching is PEFT's (:func:`matches_target`), over every module name including ``""`` (the
    model itself). Then:

    * a matched module of a registered type (see kinds.py) is wrapped by its copy class;
    * a matched module inside an ``nn.MultiheadAttention`` (e.g. ``out_proj``, which torch's
      attention reads as ``out_proj.weight`` without calling it) makes the whole attention module
      the target, wrapped by the fallback: wrapping ``out_proj`` alone would not perturb it; so
      does a matched module inside (or equal to) a sequence-first torch transformer module
      (``nn.TransformerEncoderLayer(..., batch_first=False)`` and the like: the outermost one is
      wrapped whole, with batch dimension 1), because the batched layers split dimension 0;
    * a matched container (no parameters of its own, e.g. ``nn.Sequential`` or a residual block)
      stands for the modules inside it, each wrapped as if it had been named; parameter-free
      modules inside it (ReLU, pooling) carry nothing and are passed over;
    * a module with parameters of its own and no batched copy class goes to the fallback, which
      perturbs all its parameters, its submodules' included.

    ValueError (never a silent skip) when nothing matches, when a named module has no parameters,
    or when a module needs the fallback and ``fallback=False``.
    """
    if not target_modules:
        raise ValueError("target_modules is empty")
    modules = dict(model.named_modules())
    matched = {n for n in modules if matches_target(n, target_modules)}
    if not matched:
        with_params = [n or "<root>" for n, m in modules.items() if _owns_parameters(m)]
        raise ValueError(
            f"target_modules={target_modules!r} matches no module; modules with parameters here: "
            f"{with_params[:20]}{' ...' if len(with_params) > 20 else ''}"
        )
    for n in sorted(matched):
        parts = n.split(".") if n else []
        for i in range(len(parts)):  # the outermost whole-only module above n takes its place
            anc = ".".join(parts[:i])
            if _whole_only(modules[anc]):
                matched.discard(n)
                matched.add(anc)
                break
    out: list[tuple[str, nn.Module, Callable[..., CopyLayer]]] = []

    def visit(name: str, module: nn.Module, covered: bool) -> None:
        named = name in matched
        covered = covered or named
        if isinstance(module, CopyLayer):
            raise ValueError(f"{name or '<root>'} is already a copy layer; detach first")
        if covered:
            factory = copy_class_for(module)
            container = (
                factory is FallbackCopies
                and not _owns_parameters(module)
                and not _whole_only(module)
                and any(True for _ in module.children())
            )
            if factory is None:
                if named:
                    raise ValueError(
                        f"target_modules={target_modules!r} matches {name or '<root>'!r} "
                        f"({type(module).__name__}), which has no parameters to perturb; "
                        f"wrappable layer types: {_wrappable_types()}"
                    )
                return
            if not container:
                if factory is FallbackCopies and not fallback:
                    raise ValueError(
                        f"{name or '<root>'!r} ({type(module).__name__}) has no batched copy class and "
                        f"fallback=False; wrappable layer types: {_wrappable_types()}; pass fallback=True "
                        f"to perturb it with the (slower) torch.func fallback, or leave it out of target_modules"
                    )
                out.append((name, module, factory))
                return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child, covered)

    visit("", model, False)
    if not out:
        raise ValueError(
            f"target_modules={target_modules!r} selects no module with parameters; wrappable layer types: "
            f"{_wrappable_types()}"
        )
    return out


def attach_copies(
    model: nn.Module,
    num_adapters: int,
    rank: Union[int, str],
    alpha: float,
    target_modules: Union[str, Sequence[str]],
    dropout: float = 0.0,
    seed: Optional[int] = None,
    adapter_ids: Optional[Sequence[int]] = None,
    *,
    adapter_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    fallback: bool = True,
    batchnorm: Optional[str] = None,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap every module :func:`select_targets` picks by its copy class with ``num_adapters``
    copies, in place; freeze every base parameter; return ``(model, adapter parameters)``.

    ``model`` is returned unchanged unless the model itself was a target (``target_modules``
    matching ``""``, e.g. a bare ``nn.Linear`` model): then the returned root is the copy layer
    wrapping it, which :func:`detach` unwraps again. ``rank`` (int or ``"full"``), ``alpha`` and
    ``dropout`` apply to linear / conv / embedding layers; norms always get per-copy affine
    deltas, the fallback full-rank deltas. ``batchnorm`` ("eval" or "batch"): also put every
    BatchNorm of the model under the copy rules (:func:`daunce_fast.lora.norm.make_copies_independent`);
    None leaves untargeted BatchNorms as they are. The rest is :func:`attach`'s.
    """
    if hasattr(model, _STATE):
        raise RuntimeError("adapters are already attached to this model; detach(model) first")
    targets = select_targets(model, target_modules, fallback)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    root = model
    for name, mod, factory in targets:
        new = factory(
            mod,
            num_adapters,
            rank,
            alpha,
            dropout=dropout,
            name=name,
            seed=seed,
            adapter_ids=adapter_ids,
            adapter_dtype=adapter_dtype,
            backend=backend,
        )
        if name:
            _set_child(model, name, new)
        else:
            root = new
        params.extend(new.adapter_parameters())
    if batchnorm is not None:
        make_copies_independent(root, num_adapters, batchnorm)
    object.__setattr__(root, _STATE, flags)
    return root, params


def attach(
    model: nn.Module,
    num_adapters: int,
    rank: Union[int, str],
    alpha: float,
    target_modules: Union[str, Sequence[str]],
    dropout: float = 0.0,
    seed: Optional[int] = None,
    adapter_ids: Optional[Sequence[int]] = None,
    *,
    adapter_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    fallback: bool = True,
    batchnorm: Optional[str] = None,
) -> list[nn.Parameter]:
    """Replace every module whose name matches ``target_modules`` (PEFT semantics, see
    :func:`matches_target` and :func:`select_targets`) by its batched copy layer with
    ``num_adapters`` copies, in place; freeze every base parameter; return the adapter parameters.

    After this the model takes adapter-major batches of leading size ``K*m``. With ``seed`` set,
    slot ``i`` of every layer is initialised from ``(seed, adapter_ids[i], layer name)`` only
    (``adapter_ids`` defaults to ``range(num_adapters)``), so adapters trained in chunks equal
    adapters trained all at once. :func:`detach` undoes everything. The model itself cannot be
    replaced in place: when ``target_modules`` matches it (``""``), ValueError says to use
    :func:`attach_copies`, which returns the new root.
    """
    if hasattr(model, _STATE):
        raise RuntimeError("adapters are already attached to this model; detach(model) first")
    if any(name == "" for name, _, _ in select_targets(model, target_modules, fallback)):
        raise ValueError(
            "target_modules matches the model itself (''), which attach cannot replace in place; use "
            "model, params = daunce_fast.lora.attach_copies(model, ...) to get the wrapped model back"
        )
    root, params = attach_copies(
        model,
        num_adapters,
        rank,
        alpha,
        target_modules,
        dropout,
        seed,
        adapter_ids,
        adapter_dtype=adapter_dtype,
        backend=backend,
        fallback=fallback,
        batchnorm=batchnorm,
    )
    assert root is model
    return params


def detach(model: nn.Module) -> nn.Module:
    """Put the original modules back and restore every base parameter's ``requires_grad``; returns
    the original model (the unwrapped root when :func:`attach_copies` wrapped the model itself)."""
    if not hasattr(model, _STATE):
        raise RuntimeError("no adapters are attached to this model")
    flags = getattr(model, _STATE)
    object.__delattr__(model, _STATE)
    if isinstance(model, CopyLayer) and model.name == "":
        model = model.base  # the root itself was wrapped (attach_copies returned the copy layer)
    for name, mod in lora_modules(model):
        _set_child(model, name, mod.base)
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    return model


def reset_adapters(model: nn.Module, adapter_ids: Iterable[int], seed: Optional[int]) -> None:
    """Re-initialise every attached layer's slots as adapters ``adapter_ids`` (see
    :meth:`CopyLayer.reset_adapters`); e.g. to train ids ``[K_c, 2*K_c)`` after ``[0, K_c)``.
    Make a fresh optimiser afterwards: its state belongs to the previous adapters."""
    ids = list(adapter_ids)
    mods = lora_modules(model)
    if not mods:
        raise RuntimeError("no adapters are attached to this model")
    for _, m in mods:
        m.reset_adapters(ids, seed)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Inside, every attached layer runs its plain frozen base (inputs of any leading size, e.g.
    ``[m, ...]``): the outputs z0 of the base model."""
    mods = [m for _, m in lora_modules(model)]
    old = [m.disabled for m in mods]
    try:
        for m in mods:
            m.disabled = True
        yield model
    finally:
        for m, o in zip(mods, old):
            m.disabled = o


def _state_names(name: str, m: CopyLayer) -> list[tuple[str, nn.Parameter]]:
    return [(f"{name}.{suffix}" if name else suffix, p) for suffix, p in m.state_items()]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{'<layer>.<suffix>': [K, ...]}`` for every copy layer's :meth:`CopyLayer.state_items`
    (linear LoRA ``lora_A [K, r, d_in]`` / ``lora_B [K, d_out, r]``, full rank ``delta_weight`` /
    ``delta_bias``, norms ``delta_weight`` / ``delta_bias``, fallback ``delta.<parameter name>``):
    detached copies, safe to keep while training goes on."""
    return {k: p.detach().clone() for name, m in lora_modules(model) for k, p in _state_names(name, m)}


@torch.no_grad()
def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy a :func:`adapter_state` dict back into the attached layers (shapes must match)."""
    own = {k: p for name, m in lora_modules(model) for k, p in _state_names(name, m)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(f"load_adapter_state: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, p in own.items():
        if k in state:
            if tuple(state[k].shape) != tuple(p.shape):
                raise ValueError(f"load_adapter_state: {k} has shape {tuple(state[k].shape)}, want {tuple(p.shape)}")
            p.copy_(state[k])
