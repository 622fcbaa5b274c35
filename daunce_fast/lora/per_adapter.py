"""Per-adapter statistics over stacked adapter parameters (leading dimension K). Nothing here ever
mixes two adapters: norms, clipping, loss weights and learning rates are all per slot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch

Tensors = Union[torch.Tensor, Iterable[torch.Tensor]]


def _params(params: Tensors) -> list[torch.Tensor]:
    ps = [params] if isinstance(params, torch.Tensor) else list(params)
    if not ps:
        raise ValueError("no parameters")
    K = ps[0].shape[0]
    for p in ps:
        if p.dim() < 1 or p.shape[0] != K:
            raise ValueError(f"adapter parameters must all have leading dimension K={K}, got {tuple(p.shape)}")
    return ps


def adapter_grad_norms(params: Tensors, norm_type: float = 2.0) -> torch.Tensor:
    """``[K]`` float32: adapter k's gradient norm over all its slices ``p.grad[k]`` (params without
    a gradient count as zero), computed as ``torch.nn.utils.clip_grad_norm_`` does for one model."""
    ps = _params(params)
    K = ps[0].shape[0]
    grads = [p.grad for p in ps if p.grad is not None]
    if not grads:
        return torch.zeros(K, device=ps[0].device)
    # Per tensor, per adapter, then across tensors: the same two-level reduction torch uses.
    per = torch.stack([torch.linalg.vector_norm(g.reshape(K, -1), norm_type, dim=1) for g in grads], dim=1)
    return torch.linalg.vector_norm(per, norm_type, dim=1)


@torch.no_grad()
def clip_grad_norm_per_adapter(
    params: Tensors, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> torch.Tensor:
    """Clip each adapter's gradient to norm ``max_norm`` separately, exactly as
    ``torch.nn.utils.clip_grad_norm_`` would on that adapter alone; return the ``[K]`` norms
    before clipping. A non-finite norm only affects its own adapter."""
    ps = _params(params)
    norms = adapter_grad_norms(ps, norm_type)
    if error_if_nonfinite and not torch.isfinite(norms).all():
        bad = torch.nonzero(~torch.isfinite(norms)).flatten().tolist()
        raise RuntimeError(f"non-finite gradient norm for adapters {bad[:10]}")
    coef = torch.clamp(float(max_norm) / (norms + 1e-6), max=1.0)
    for p in ps:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype).view(-1, *([1] * (p.grad.dim() - 1))))
    return norms


def split_loss(loss_rows: torch.Tensor, num_adapters: int) -> torch.Tensor:
    """``[K]``: the mean of each adapter's rows of an adapter-major per-row loss ``[K*m, ...]``."""
    if loss_rows.shape[0] % num_adapters:
        raise ValueError(f"{loss_rows.shape[0]} loss rows are not {num_adapters} equal adapter-major segments")
    return loss_rows.reshape(num_adapters, -1).mean(1)


def per_adapter_loss(
    loss_rows: torch.Tensor, num_adapters: int, scale: Optional[Union[Sequence[float], torch.Tensor]] = None
) -> torch.Tensor:
    """The scalar to call ``backward`` on: ``sum_k scale[k] * mean(rows of adapter k)``.

    Adapter k's gradient is then exactly ``scale[k]`` times what it would get trained alone on a
    mean loss over its own rows (the sum never couples adapters)."""
    per = split_loss(loss_rows, num_adapters)
    if scale is not None:
        per = per * torch.as_tensor(scale, dtype=per.dtype, device=per.device)
    return per.sum()


@contextlib.contextmanager
def scale_lr_per_adapter(params: Tensors, lr_scale: Union[Sequence[float], torch.Tensor]):
    """Wrap ``optimizer.step()`` so adapter k's update is multiplied by ``lr_scale[k]``::

        with scale_lr_per_adapter(params, lr_scale):
            opt.step()

    For optimisers whose update is linear in the learning rate at fixed state (SGD with momentum,
    Adam, AdamW with its decoupled weight decay) this equals giving adapter k the learning rate
    ``lr * lr_scale[k]``. Costs one copy of the parameters.
    """
    ps = _params(params)
    K = ps[0].shape[0]
    s = torch.as_tensor(lr_scale, dtype=torch.float32)
    if s.shape != (K,):
        raise ValueError(f"lr_scale must have K={K} entries, got shape {tuple(s.shape)}")
    before = [p.detach().clone() for p in ps]
    yield
    with torch.no_grad():
        for p, old in zip(ps, before):
            w = s.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.lerp(old, p, w))  # exact p where lr_scale is 1
