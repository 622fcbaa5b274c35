"""What every batched perturbed-copy layer has in common, and the registry that says which layer
type is wrapped by which copy class.

A *copy layer* wraps one frozen module of θ0 and holds K per-copy parameter sets ("adapters")
with leading dimension K. Its input is adapter-major: the leading ``K*m`` rows of the batch
dimension hold copy 0's ``m`` rows, then copy 1's, and so on; copy k's rows only ever see copy
k's parameters (no statistic or product mixes two copies). At zero adapter parameters every copy
equals the base module exactly.

    class CopyLayer(nn.Module)        base, num_adapters, name, disabled, kind
        adapter_parameters()          -> list[nn.Parameter], each [K, ...]
        reset_adapters(ids, seed)     copy slot i becomes copy ids[i] (deterministic from (seed, id, name))
        state_items()                 -> [(suffix, parameter)]: the checkpoint names of adapter_state()
        describe()                    -> {"name", "type", "kind", "params_per_copy", "bytes_per_copy"}
    register_copy(types, factory)     the copy class for module types (checked in registration order)
    copy_class_for(module)            -> factory or None

Attribute reads a copy layer does not define fall through to the wrapped module, so code that
reads ``layer.weight`` / ``layer.in_features`` of a wrapped layer keeps working (it sees θ0's
values: a module that bypasses ``forward`` and reads weights directly, like
``nn.MultiheadAttention.out_proj``, must be wrapped as a whole instead; see attach.py).

Every copy layer carries a no-op forward pre-hook: torch's fused fast paths
(``nn.TransformerEncoderLayer`` in eval mode under ``no_grad``) read the weights of their
submodules directly and would silently compute θ0; they stand down when a submodule has hooks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Optional

import torch
from torch import nn

# The batch size of the forward pass in progress, in adapter-major rows (K*m), when the caller
# knows it (expected_rows). A layer whose input merely has a leading size divisible by K (e.g.
# position embeddings taking [T], or a sequence-first layer taking [T, B, d]) would otherwise split
# positions across copies without any error.
_EXPECTED_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("daunce_fast_rows", default=None)


@contextlib.contextmanager
def expected_rows(n: int) -> Iterator[None]:
    """Inside, every copy layer refuses (ValueError) an input whose batch dimension is not ``n``
    rows (``n = K*m``, the adapter-major batch of the forward pass in progress). The DAUNCE
    pipeline runs every copies' forward inside it, so a wrapped layer that does not see the batch
    dimension is an error naming the layer, never copies mixed silently."""
    token = _EXPECTED_ROWS.set(int(n))
    try:
        yield
    finally:
        _EXPECTED_ROWS.reset(token)


class CopyLayer(nn.Module):
    """Base of the batched perturbed-copy layers (see the module docstring)."""

    kind: str = "copy"  # "full", "lora", "affine", "fallback": what a copy's parameters are

    def __init__(self, base: nn.Module, num_adapters: int, name: str = ""):
        super().__init__()
        if int(num_adapters) < 1:
            raise ValueError(f"num_adapters must be >= 1, got {num_adapters}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.num_adapters = int(num_adapters)
        self.name = name
        self.disabled = False
        # Why: see the module docstring (fused fast paths check for hooks and then use the slow path).
        self.register_forward_pre_hook(_no_fast_path)

    # ------------------------------------------------------------------ what subclasses provide
    def adapter_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def reset_adapters(self, adapter_ids: Iterable[int], seed: Optional[int] = None) -> None:
        raise NotImplementedError

    def state_items(self) -> list[tuple[str, nn.Parameter]]:
        """``(suffix, parameter)`` pairs; ``adapter_state`` names them ``f"{layer name}.{suffix}"``."""
        raise NotImplementedError

    def kind_label(self) -> str:
        """Human-readable kind for summaries, e.g. ``"lora r=8"``, ``"full"``, ``"affine"``."""
        return self.kind

    # ------------------------------------------------------------------ shared
    def describe(self) -> dict:
        """One row of a run's summary: what is perturbed here and what one copy costs."""
        params = self.adapter_parameters()
        per_copy = sum(p[0].numel() for p in params)
        return {
            "name": self.name,
            "type": type(self.base).__name__,
            "kind": self.kind_label(),
            "params_per_copy": int(per_copy),
            "bytes_per_copy": int(sum(p[0].numel() * p.element_size() for p in params)),
        }

    def check_segments(self, x: torch.Tensor, dim: int = 0) -> int:
        """``m``, the rows per copy along ``dim``; ValueError unless ``x.shape[dim]`` is ``K*m``."""
        K = self.num_adapters
        if x.dim() <= dim or x.shape[dim] % K:
            raise ValueError(
                f"{self.name or type(self).__name__}: input {tuple(x.shape)} must hold K={K} "
                f"adapter-major segments of equal size along dimension {dim}"
            )
        # (not under torch.compile: dynamo cannot trace a ContextVar; eager calls check it)
        want = None if torch.compiler.is_compiling() else _EXPECTED_ROWS.get()
        if want is not None and x.shape[dim] != want:
            raise ValueError(
                f"{self.name or type(self).__name__}: input {tuple(x.shape)} has {x.shape[dim]} rows along "
                f"dimension {dim}, but this forward's batch is {want} adapter-major rows (K={K}): the layer "
                f"does not take the batch dimension there (e.g. position embeddings, sequence-first "
                f"inputs); leave it out of target_modules"
            )
        return x.shape[dim] // K

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base" or name.startswith("__"):
                raise
            base = self._modules.get("base")
            if base is None:
                raise
            return getattr(base, name)


def _no_fast_path(module: nn.Module, args: tuple) -> None:
    return None


# ---------------------------------------------------------------------------------- registry
Factory = Callable[..., CopyLayer]
_REGISTRY: list[tuple[tuple[type, ...] | Callable[[nn.Module], bool], Factory]] = []


def register_copy(types: tuple[type, ...] | Callable[[nn.Module], bool], factory: Factory) -> None:
    """Register ``factory(module, num_adapters, rank, alpha, *, name, seed, adapter_ids, **options)``
    as the copy class of modules that are instances of ``types`` (or for which the predicate
    ``types(module)`` is True). Earlier registrations win."""
    _REGISTRY.append((types, factory))


def copy_class_for(module: nn.Module) -> Optional[Factory]:
    """The registered factory for ``module``, or None when no batched copy class covers it."""
    for types, factory in _REGISTRY:
        if isinstance(types, tuple):
            if type(module) in types or isinstance(module, types):
                return factory
        elif types(module):
            return factory
    return None
