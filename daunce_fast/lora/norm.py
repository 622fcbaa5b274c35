"""Per-copy affine parameters of normalisation layers, and BatchNorm statistics that never mix copies.

``MultiCopyNorm`` wraps ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, ``nn.BatchNorm1d/2d/3d``
and ``nn.InstanceNorm1d/2d/3d``. Copy ``k`` computes the base normalisation ``n(x)`` (no affine)
and then ``n(x) * (weight + delta_weight[k]) + (bias + delta_bias[k])`` on its own rows.

Statistics (why: a DAUNCE copy must be a function of its own rows and of θ0 only):

* BatchNorm, ``batchnorm="eval"`` (default): θ0's running statistics, whatever the module's
  training flag, i.e. ``(x - running_mean) / sqrt(running_var + eps)``.
* BatchNorm, ``batchnorm="batch"``: in training mode each copy's own batch statistics over its
  ``m`` rows (and the spatial positions), as a training-mode BatchNorm would compute them for that
  copy alone; in eval mode θ0's running statistics, as BatchNorm does.
* A BatchNorm without running statistics (``track_running_stats=False``) always uses batch
  statistics, per copy.
* InstanceNorm: per-sample statistics (or θ0's running statistics in eval mode when tracked).

The running statistics are never updated: θ0's buffers stay as they are.
:func:`make_copies_independent` puts every BatchNorm of a model under these rules, including
those that carry no perturbation (kind ``"stats"``: no adapter parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .copies import CopyLayer
from .layer import _default_adapter_dtype

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_RMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
NORM_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, *_BN, *_IN, *_RMS)
BATCHNORM_MODES = ("eval", "batch")


def _check_mode(batchnorm: str) -> str:
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    return batchnorm


class MultiCopyNorm(CopyLayer):
    """``num_adapters`` copies of one frozen normalisation layer (see the module docstring).

    ``delta_weight [K, *w.shape]`` / ``delta_bias [K, *b.shape]`` (zero-init, one per affine
    parameter the base has; none at all with ``affine=False``: kind ``"stats"``). Input
    ``[K*m, ...]`` adapter-major on the first dimension; channels on dimension 1 (BatchNorm,
    GroupNorm, InstanceNorm) or the trailing ``normalized_shape`` (LayerNorm, RMSNorm).
    ``rank``, ``alpha``, ``dropout``, ``backend`` are accepted for a uniform constructor and ignored.
    """

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
        batchnorm: str = "eval",
        perturb: bool = True,
    ):
        if not isinstance(base, NORM_TYPES):
            raise TypeError(f"MultiCopyNorm wraps {[t.__name__ for t in NORM_TYPES]}, not {type(base).__name__}")
        super().__init__(base, num_adapters, name)
        self.batchnorm = _check_mode(batchnorm)
        K = self.num_adapters
        w, b = getattr(base, "weight", None), getattr(base, "bias", None)
        self.delta_weight = self.delta_bias = None
        if perturb and w is not None:
            dt = adapter_dtype or _default_adapter_dtype(w.dtype)
            self.delta_weight = nn.Parameter(torch.zeros(K, *w.shape, device=w.device, dtype=dt))
            if b is not None:
                self.delta_bias = nn.Parameter(torch.zeros(K, *b.shape, device=b.device, dtype=dt))
        self.kind = "affine" if self.delta_weight is not None else "stats"

    def state_items(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (n, p) for n, p in (("delta_weight", self.delta_weight), ("delta_bias", self.delta_bias)) if p is not None
        ]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.state_items()]

    def kind_label(self) -> str:
        if isinstance(self.base, _BN):
            return f"{self.kind} (batchnorm={self.batchnorm})"
        return self.kind

    @torch.no_grad()
    def reset_adapters(self, adapter_ids: Iterable[int], seed: Optional[int] = None) -> None:
        ids = list(adapter_ids)
        if len(ids) != self.num_adapters:
            raise ValueError(f"{len(ids)} adapter ids for {self.num_adapters} slots")
        for p in self.adapter_parameters():
            p.zero_()

    # ------------------------------------------------------------------ the computation
    def _per_copy(self, x: torch.Tensor, K: int, w: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> torch.Tensor:
        """The base normalisation of ``x`` (``K`` adapter-major segments) with copy k's affine
        ``w[k]``, ``b[k]`` (``[K, *param shape]`` or None), each copy computed by the same torch
        kernel as the base (so zero deltas give θ0's outputs bit for bit)."""
        base = self.base
        if isinstance(base, (nn.LayerNorm, *_RMS)):
            # Per-row statistics, per-copy affine: one kernel call per copy (no torch kernel takes
            # per-row weights, and a reformulation would not round like the base).
            outs = []
            for k, xk in enumerate(x.chunk(K)):
                wk = None if w is None else w[k]
                if isinstance(base, nn.LayerNorm):
                    outs.append(F.layer_norm(xk, base.normalized_shape, wk, None if b is None else b[k], base.eps))
                else:
                    outs.append(F.rms_norm(xk, base.normalized_shape, wk, base.eps))
            return torch.cat(outs)
        # Channel statistics: copy k's channel c becomes channel k*C + c of one call over
        # [m, K*C, ...], so every statistic stays within one copy and the affine is per copy.
        m, C = x.shape[0] // K, x.shape[1]
        xk = x.reshape(K, m, *x.shape[1:]).transpose(0, 1).reshape(m, K * C, *x.shape[2:])
        wk = None if w is None else w.reshape(K * C)
        bk = None if b is None else b.reshape(K * C)
        if isinstance(base, nn.GroupNorm):
            y = F.group_norm(xk, K * base.num_groups, wk, bk, base.eps)
        else:
            rm, rv = base.running_mean, base.running_var
            if isinstance(base, _IN):
                use_input = base.training or rm is None
            else:
                use_input = rm is None or (self.batchnorm == "batch" and base.training)
            # Running statistics only passed when read (as K-fold copies): never updated in place.
            rmk = None if use_input else rm.repeat(K)
            rvk = None if use_input else rv.repeat(K)
            if isinstance(base, _IN):
                y = F.instance_norm(xk, rmk, rvk, wk, bk, use_input, 0.0, base.eps)
            else:
                y = F.batch_norm(xk, rmk, rvk, wk, bk, use_input, 0.0, base.eps)
        return y.reshape(m, K, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, (*_BN, *_IN, nn.GroupNorm)) and x.dim() < 2:
            raise ValueError(
                f"{self.name or type(self.base).__name__}: input {tuple(x.shape)} has no channel dimension"
            )
        w, b = getattr(self.base, "weight", None), getattr(self.base, "bias", None)
        if self.disabled or self.delta_weight is None:
            K = 1 if self.disabled else self.num_adapters
            if not self.disabled:
                self.check_segments(x)
            wk = None if w is None else w.unsqueeze(0).expand(K, *w.shape)
            bk = None if b is None else b.unsqueeze(0).expand(K, *b.shape)
            return self._per_copy(x, K, wk, bk)
        K = self.num_adapters
        self.check_segments(x)
        dt = self.delta_weight.dtype
        wk = w.to(dt) + self.delta_weight
        bk = None if b is None or self.delta_bias is None else b.to(dt) + self.delta_bias
        return self._per_copy(x.to(dt), K, wk, bk).to(x.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_adapters={self.num_adapters}, kind={self.kind_label()!r}"


def make_copies_independent(model: nn.Module, num_adapters: int, batchnorm: str = "eval") -> list[str]:
    """Put every BatchNorm of ``model`` under the copy rules, in place: an already wrapped one
    (a :class:`MultiCopyNorm`) switches to ``batchnorm``; any other ``nn.BatchNorm1d/2d/3d`` —
    targeted or not, with or without affine — is wrapped by a :class:`MultiCopyNorm` with no
    adapter parameters (kind ``"stats"``), so its ``K`` copies never share statistics and θ0's
    running statistics are never updated. :func:`daunce_fast.lora.detach` unwraps them.

    Call it after :func:`daunce_fast.lora.attach` on the same model with the same ``num_adapters``.
    Returns the names of the BatchNorm layers now under the rules. The root module itself is left
    alone (wrap a bare BatchNorm model with ``attach_copies``)."""
    _check_mode(batchnorm)
    names = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, MultiCopyNorm) and isinstance(mod.base, _BN):
            if mod.num_adapters != int(num_adapters):
                raise ValueError(f"{name}: carries {mod.num_adapters} copies, not num_adapters={num_adapters}")
            mod.batchnorm = batchnorm
            names.append(name)
        elif isinstance(mod, _BN) and name and not _inside_copy_layer(model, name):
            new = MultiCopyNorm(mod, num_adapters, name=name, batchnorm=batchnorm, perturb=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            names.append(name)
    return names


def _inside_copy_layer(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), CopyLayer) for i in range(1, len(parts)))
