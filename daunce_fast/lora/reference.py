"""Torch path of the batched multi-LoRA linear op: the CPU implementation and the oracle.

Layout (adapter-major): ``x`` is ``[N, d_in]`` with ``N = K * m``; rows ``[k*m, (k+1)*m)`` belong to
adapter ``k``. ``A`` is ``[K, r, d_in]``, ``B`` is ``[K, d_out, r]``, ``W`` is ``[d_out, d_in]``
(any strides, e.g. the transpose of a GPT-2 ``Conv1D`` weight).

Semantics, per adapter ``k`` (``xa`` is the LoRA input: ``dropout(x)``, or ``x`` itself)::

    y[k]  = x[k] @ W.T + bias + scale * (xa[k] @ A[k].T) @ B[k].T
    h[k]  = xa[k] @ A[k].T                      # saved for the backward, [N, r]

As PEFT does, the LoRA product runs in the adapters' dtype (``x`` is cast to it) and the base
GEMM in ``x``'s dtype; the sum is returned in ``x``'s dtype.

The base GEMM runs once over all ``N`` rows; the per-adapter products are single ``bmm`` calls
over ``[K, m, .]`` views (no Python loop over adapters), and the expand / the ``dX`` correction
accumulate in place into the GEMM's output (``baddbmm_``), so no ``[N, d_out]`` temporary is made.
"""
from __future__ import annotations

import torch


def _split(t: torch.Tensor, K: int) -> torch.Tensor:
    return t.view(K, t.shape[0] // K, t.shape[1])


def forward_torch(x, weight, bias, A, B, scale: float, xa=None):
    """Returns ``(y [N, d_out] in x.dtype, h [N, r] in the adapter dtype)``."""
    K = A.shape[0]
    ad = A.dtype
    y = torch.addmm(bias, x, weight.t()) if bias is not None else torch.mm(x, weight.t())
    src = x if xa is None else xa
    h = torch.bmm(_split(src, K).to(ad), A.transpose(1, 2))  # [K, m, r]
    yk = _split(y, K)
    if y.dtype == ad:
        yk.baddbmm_(h, B.transpose(1, 2), alpha=scale)
    else:  # PEFT: LoRA in adapter dtype, then added in the result dtype
        yk.add_(torch.bmm(h, B.transpose(1, 2)).mul_(scale).to(y.dtype))
    return y, h.view(-1, h.shape[-1])


def backward_torch(dy, x, h, weight, A, B, scale: float, xa=None, need_dx=True, need_dxa=False,
                   need_dA=True, need_dB=True):
    """Gradients of ``forward_torch``: ``(dx, dxa, dA, dB)`` (``None`` where not needed).

    ``dx = dy @ W (+ g @ A[k] when xa is x)``, ``g = scale * dy[k] @ B[k]``,
    ``dA[k] = g[k].T @ xa[k]``, ``dB[k] = scale * dy[k].T @ h[k]``. No ``dW``: the base is frozen.
    """
    K = A.shape[0]
    ad = A.dtype
    dyk = _split(dy, K)
    dya = dyk if dy.dtype == ad else dyk.to(ad)
    hk = _split(h, K)
    src = x if xa is None else xa
    dx = dxa = dA = dB = None
    g = None
    if need_dA or need_dx or need_dxa:
        g = torch.bmm(dya, B).mul_(scale)  # [K, m, r]
    if need_dB:
        dB = torch.bmm(dya.transpose(1, 2), hk).mul_(scale)  # [K, d_out, r]
    if need_dA:
        dA = torch.bmm(g.transpose(1, 2), _split(src, K).to(ad))  # [K, r, d_in]
    if need_dx:
        dx = torch.mm(dy, weight)
        if xa is None:
            dxk = _split(dx, K)
            if dx.dtype == ad:
                dxk.baddbmm_(g, A)
            else:
                dxk.add_(torch.bmm(g, A).to(dx.dtype))
    if need_dxa and xa is not None:
        dxa = torch.bmm(g, A).view(-1, A.shape[-1]).to(xa.dtype)
    return dx, dxa, dA, dB


def multilora_reference(x, weight, bias, A, B, scale: float, xa=None):
    """Float64, one adapter at a time: the readable definition the kernels are tested against."""
    K = A.shape[0]
    x64 = x.double()
    xa64 = x64 if xa is None else xa.double()
    m = x.shape[0] // K
    out = x64 @ weight.double().t()
    if bias is not None:
        out = out + bias.double()
    parts = []
    for k in range(K):
        rows = slice(k * m, (k + 1) * m)
        parts.append(out[rows] + scale * (xa64[rows] @ A[k].double().t()) @ B[k].double().t())
    return torch.cat(parts, 0)
