"""FallbackCopies: K full-rank perturbed copies of any module with parameters, via torch.func.

Used where no batched copy class exists (``nn.MultiheadAttention``, a user's custom layer): slower
than the batched layers, but correct for any module whose forward is a function of its parameters,
buffers and inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils import _pytree as pytree

from .copies import CopyLayer
from .layer import _default_adapter_dtype


def infer_batch_dim(module: nn.Module) -> int:
    """1 when the module (or the first ``nn.MultiheadAttention`` inside it) says ``batch_first=False``
    (torch's sequence-first layout ``[L, N, E]``), else 0."""
    flag = getattr(module, "batch_first", None)
    if flag is None:
        flag = next((m.batch_first for m in module.modules() if isinstance(m, nn.MultiheadAttention)), True)
    return 0 if flag else 1


class FallbackCopies(CopyLayer):
    """``num_adapters`` copies of any module: copy ``k`` is ``module`` with every parameter ``p``
    (its own and its submodules') replaced by ``p + delta[k]``::

        y[copy k] = torch.func.functional_call(module, {n: p_n + delta_n[k]}, inputs of copy k)

    ``delta_n [K, *p_n.shape]`` start at zero (kind ``"fallback"``: full-rank, whatever ``rank``).

    Inputs: every tensor argument is adapter-major along the batch dimension ``batch_dim`` (0, or
    1 for modules with ``batch_first=False`` such as ``nn.MultiheadAttention``'s default; see
    :func:`infer_batch_dim`) and is split into ``K`` segments there, except: arguments named
    ``*key_padding_mask`` (split on dimension 0), other ``*mask`` arguments (split on dimension 0
    when 3-D, i.e. per sample ``[N*heads, L, S]``; shared by every copy when 2-D) and 0-d tensors
    (shared). Outputs: every tensor of the (possibly nested, tuple) output is merged back along
    ``batch_dim``, except ``nn.MultiheadAttention``'s attention weights (dimension 0); ``None`` and
    non-tensor outputs are passed through (from copy 0); 0-d outputs come back as ``[K]``.

    The copies run under ``torch.func.vmap`` (``randomness="different"``: each copy draws its own
    dropout masks). A module that vmap cannot run (data-dependent control flow, in-place buffer
    updates such as a training-mode BatchNorm inside) runs as a loop over the K copies instead,
    each with private copies of the buffers, so θ0's buffers are never changed; ``kind_label()``
    then says ``"fallback loop"`` and ``vmap_error`` holds the reason.
    """

    kind = "fallback"

    def __init__(
        self,
        base: nn.Module,
        num_adapters: int,
        rank: Union[int, str, None] = None,
        alpha: float = 1.0,
        dropout: float = 0.0,
        *,
        name: str = "",
        seed: Optional[int] = None,
        adapter_ids: Optional[Sequence[int]] = None,
        adapter_dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
        batch_dim: Optional[int] = None,
    ):
        named = list(base.named_parameters())
        if not named:
            raise ValueError(f"{name or type(base).__name__} ({type(base).__name__}) has no parameters to perturb")
        super().__init__(base, num_adapters, name)
        self.batch_dim = infer_batch_dim(base) if batch_dim is None else int(batch_dim)
        self.param_names = [n for n, _ in named]
        K = self.num_adapters
        self.deltas = nn.ParameterList(
            [
                nn.Parameter(
                    torch.zeros(K, *p.shape, device=p.device, dtype=adapter_dtype or _default_adapter_dtype(p.dtype))
                )
                for _, p in named
            ]
        )
        self._signature = inspect.signature(base.forward)
        self.use_loop = False
        self.vmap_error: Optional[str] = None

    def state_items(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"delta.{n}", d) for n, d in zip(self.param_names, self.deltas)]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.deltas)

    def kind_label(self) -> str:
        return "fallback loop" if self.use_loop else "fallback"

    @torch.no_grad()
    def reset_adapters(self, adapter_ids: Iterable[int], seed: Optional[int] = None) -> None:
        ids = list(adapter_ids)
        if len(ids) != self.num_adapters:
            raise ValueError(f"{len(ids)} adapter ids for {self.num_adapters} slots")
        for d in self.deltas:
            d.zero_()

    # ------------------------------------------------------------------ splitting inputs / outputs
    def _split_dim(self, arg: str, t: torch.Tensor) -> Optional[int]:
        if t.dim() == 0:
            return None
        if arg.endswith("key_padding_mask"):
            return 0
        if arg.endswith("mask"):
            return 0 if t.dim() == 3 else None
        return self.batch_dim

    def _out_dims(self, n_leaves: int) -> list[int]:
        dims = [self.batch_dim] * n_leaves
        if isinstance(self.base, nn.MultiheadAttention) and n_leaves == 2:
            dims[1] = 0  # attention weights [N, L, S] are batch-first whatever batch_first says
        return dims

    def _params(self, deltas: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        base = dict(self.base.named_parameters())
        return {n: base[n] + d.to(base[n].dtype) for n, d in zip(self.param_names, deltas)}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return self.base(*args, **kwargs)
        K = self.num_adapters
        bound = self._signature.bind(*args, **kwargs)
        split: dict[str, tuple[torch.Tensor, int]] = {}
        for arg, value in bound.arguments.items():
            if isinstance(value, torch.Tensor):
                dim = self._split_dim(arg, value)
                if dim is not None:
                    self.check_segments(value, dim)
                    # [.., K*m, ..] -> [K, .., m, ..]: the copy index leads, for vmap or the loop.
                    split[arg] = (value.unflatten(dim, (K, value.shape[dim] // K)).movedim(dim, 0), dim)
        if not split:
            raise ValueError(f"{self.name or type(self.base).__name__}: no tensor input to split into K={K} copies")
        names = list(split)
        stacked = tuple(split[a][0] for a in names)
        spec_box: list = []

        def one_copy(deltas, inputs, buffers):
            arguments = dict(bound.arguments)
            arguments.update(zip(names, inputs))
            b = inspect.BoundArguments(self._signature, arguments)  # type: ignore[arg-type]
            params = self._params(deltas)
            if buffers is not None:
                params.update(buffers)
            out = functional_call(self.base, params, tuple(b.args), dict(b.kwargs))
            leaves, spec = pytree.tree_flatten(out)
            spec_box[:] = [spec, leaves]
            return tuple(x for x in leaves if isinstance(x, torch.Tensor))

        deltas = tuple(self.deltas)
        outs = None
        vmap_error: Optional[str] = None
        if not self.use_loop:
            try:
                outs = vmap(one_copy, in_dims=(0, 0, None), randomness="different")(deltas, stacked, None)
            except Exception as exc:  # any vmap failure: try the loop, which raises the real errors
                vmap_error = f"{type(exc).__name__}: {exc}"
        if outs is None:
            per_copy = []
            for k in range(K):
                buffers = {n: b.clone() for n, b in self.base.named_buffers()}
                per_copy.append(one_copy([d[k] for d in deltas], [s[k] for s in stacked], buffers))
            outs = tuple(torch.stack(ts) for ts in zip(*per_copy))
            if not self.use_loop:
                self.use_loop, self.vmap_error = True, vmap_error
        spec, leaves = spec_box
        merged = iter(
            y.reshape(K) if y.dim() == 1 else y.movedim(0, dim).flatten(dim, dim + 1)
            for y, dim in zip(outs, self._out_dims(len(outs)))
        )
        return pytree.tree_unflatten([next(merged) if isinstance(x, torch.Tensor) else x for x in leaves], spec)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, num_adapters={self.num_adapters}, batch_dim={self.batch_dim}, "
            f"parameters={self.param_names}, kind={self.kind_label()!r}"
        )
