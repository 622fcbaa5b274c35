"""torch backend of the batched multi-LoRA linear op (CPU and CUDA): the production torch path.

The float64 oracle the tests compare it with is :mod:`daunce_fast.lora.reference`.

Layout (adapter-major): ``x`` is ``[N, d_in]`` with ``N = K * m``; rows ``[k*m, (k+1)*m)`` belong to
adapter ``k``. ``A`` is ``[K, r, d_in]``, ``B`` is ``[K, d_out, r]``, ``W`` is ``[d_out, d_in]``
(any strides, e.g. the transpose of a GPT-2 ``Conv1D`` weight).

Semantics, per adapter ``k`` (``xa`` is the LoRA input: ``dropout(x)``, or ``x`` itself)::

    y[k]  = x[k] @ W.T + bias + scale * (xa[k] @ A[k].T) @ B[k].T
    h[k]  = scale * xa[k] @ A[k].T              # saved for the backward, [N, r]

As PEFT does, the LoRA product runs in the adapters' dtype (``x`` is cast to it) and the base
GEMM in ``x``'s dtype; the sum is returned in ``x``'s dtype.

The base GEMM runs once over all ``N`` rows; the per-adapter products are single ``bmm`` calls
over ``[K, m, .]`` views (no Python loop over adapters). The low-rank expand (and the low-rank
part of ``dX``) is written first and the frozen GEMM accumulates into it (``addmm_``, beta=1), so
no ``[N, d_out]`` temporary is made and the output is passed over once less.
"""

from __future__ import annotations

import torch


def _split(t: torch.Tensor, K: int) -> torch.Tensor:
    return t.view(K, t.shape[0] // K, t.shape[1])


def forward_torch(x, weight, bias, A, B, scale: float, xa=None):
    """Returns ``(y [N, d_out] in x.dtype, h [N, r] = scale * xa @ A[k].T in the adapter dtype)``.

    ``h`` carries the scale so the backward's ``dB`` needs no extra pass.
    """
    K = A.shape[0]
    ad = A.dtype
    src = x if xa is None else xa
    h = torch.bmm(_split(src, K).to(ad), A.transpose(1, 2)).mul_(scale)  # [K, m, r], small
    if x.dtype == ad:
        # Expand first (into a fresh [K, m, d_out], seeded with the bias), then let the frozen GEMM
        # accumulate into it with beta=1: one pass over y fewer than GEMM + in-place baddbmm_, which
        # on CPU computes into a temporary and copies.
        if bias is not None:
            yk = torch.baddbmm(bias, h, B.transpose(1, 2))
        else:
            yk = torch.bmm(h, B.transpose(1, 2))
        y = yk.view(x.shape[0], -1)
        y.addmm_(x, weight.t())
    else:  # PEFT: LoRA in the adapter dtype, added to the base result in x's dtype
        y = torch.addmm(bias, x, weight.t()) if bias is not None else torch.mm(x, weight.t())
        _split(y, K).add_(torch.bmm(h, B.transpose(1, 2)).to(y.dtype))
    return y, h.view(-1, h.shape[-1])


def backward_torch(
    dy, x, h, weight, A, B, scale: float, xa=None, need_dx=True, need_dxa=False, need_dA=True, need_dB=True
):
    """Gradients of ``forward_torch``: ``(dx, dxa, dA, dB)`` (``None`` where not needed).

    ``g = scale * dy[k] @ B[k]``, ``dx = dy @ W (+ g @ A[k] when xa is x)``,
    ``dA[k] = g[k].T @ xa[k]``, ``dB[k] = dy[k].T @ h[k]`` (h already holds the scale). No ``dW``.
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
        g = torch.bmm(dya, B).mul_(scale)  # [K, m, r], small
    if need_dB:
        dB = torch.bmm(dya.transpose(1, 2), hk)  # [K, d_out, r]
    if need_dA:
        dA = torch.bmm(g.transpose(1, 2), _split(src, K).to(ad))  # [K, r, d_in]
    if need_dx:
        if xa is None and dy.dtype == ad:
            # The low-rank part first, then the frozen GEMM accumulates into it (beta=1).
            dx = torch.bmm(g, A).view(dy.shape[0], -1)
            dx.addmm_(dy, weight)
        else:
            dx = torch.mm(dy, weight)
            if xa is None:
                _split(dx, K).add_(torch.bmm(g, A).to(dx.dtype))
    if need_dxa and xa is not None:
        dxa = torch.bmm(g, A).view(-1, A.shape[-1]).to(xa.dtype)
    return dx, dxa, dA, dB
