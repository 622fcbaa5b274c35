"""Attach K adapters to any torch model in place, detach them, re-initialise / checkpoint them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
from torch import nn

from .layer import MultiLoRALinear, is_conv1d

_STATE = "_daunce_lora_attached"  # model attribute: the base parameters' original requires_grad flags


def matches_target(name: str, target_modules: Union[str, Sequence[str]]) -> bool:
    """PEFT's rule: a regex string must match the whole module name; a list entry must equal the
    name or be its last dotted component(s) (``'q_proj'`` matches ``'model.layers.0.self_attn.q_proj'``)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def lora_modules(model: nn.Module) -> list[tuple[str, MultiLoRALinear]]:
    """``(name in the original model, module)`` of every attached MultiLoRALinear, in model order."""
    return [(m.name, m) for m in model.modules() if isinstance(m, MultiLoRALinear)]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All adapter parameters (each with leading dimension K), in model order."""
    return [p for _, m in lora_modules(model) for p in m.adapter_parameters()]


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


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
) -> list[nn.Parameter]:
    """Replace every ``nn.Linear`` / transformers ``Conv1D`` whose name matches ``target_modules``
    (PEFT semantics, see :func:`matches_target`) by a :class:`MultiLoRALinear` with ``num_adapters``
    adapters, in place; freeze every base parameter; return the adapter parameters.

    After this the model takes adapter-major batches of leading size ``K*m``. With ``seed`` set,
    slot ``i`` of every layer is initialised from ``(seed, adapter_ids[i], layer name)`` only
    (``adapter_ids`` defaults to ``range(num_adapters)``), so adapters trained in chunks equal
    adapters trained all at once. :func:`detach` undoes everything.
    """
    if hasattr(model, _STATE):
        raise RuntimeError("adapters are already attached to this model; detach(model) first")
    if not target_modules:
        raise ValueError("target_modules is empty")
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if n and matches_target(n, target_modules) and (isinstance(m, nn.Linear) or is_conv1d(m))
    ]
    if not targets:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
        raise ValueError(
            f"target_modules={target_modules!r} matches no nn.Linear/Conv1D module; "
            f"linear modules here: {linear[:20]}{' ...' if len(linear) > 20 else ''}"
        )
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for name, mod in targets:
        new = MultiLoRALinear(
            mod,
            num_adapters,
            rank,
            alpha,
            dropout,
            name=name,
            seed=seed,
            adapter_ids=adapter_ids,
            adapter_dtype=adapter_dtype,
            backend=backend,
        )
        _set_child(model, name, new)
        params.extend(new.adapter_parameters())
    object.__setattr__(model, _STATE, flags)
    return params


def detach(model: nn.Module) -> nn.Module:
    """Put the original modules back and restore every base parameter's ``requires_grad``."""
    if not hasattr(model, _STATE):
        raise RuntimeError("no adapters are attached to this model")
    for name, mod in lora_modules(model):
        _set_child(model, name, mod.base)
    flags = getattr(model, _STATE)
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    object.__delattr__(model, _STATE)
    return model


def reset_adapters(model: nn.Module, adapter_ids: Iterable[int], seed: Optional[int]) -> None:
    """Re-initialise every attached layer's slots as adapters ``adapter_ids`` (see
    :meth:`MultiLoRALinear.reset_adapters`); e.g. to train ids ``[K_c, 2*K_c)`` after ``[0, K_c)``.
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


def _state_names(name: str, m: MultiLoRALinear) -> list[tuple[str, nn.Parameter]]:
    if m.full:
        out = [(f"{name}.delta_weight", m.delta_weight)]
        return out + ([(f"{name}.delta_bias", m.delta_bias)] if m.delta_bias is not None else [])
    return [(f"{name}.lora_A", m.lora_A), (f"{name}.lora_B", m.lora_B)]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{'<layer>.lora_A': [K, r, d_in], '<layer>.lora_B': [K, d_out, r], ...}`` (full rank:
    ``.delta_weight`` / ``.delta_bias``): detached copies, safe to keep while training goes on."""
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
