"""Float64 oracle of the batched multi-LoRA linear op (tests only; never a production path).

Plain and readable: one adapter at a time, every product in float64, differentiable by autograd
(the tests take its gradients as the reference gradients). Same layout as the op: ``x [K*m, d_in]``
adapter-major, ``W [d_out, d_in]``, ``A [K, r, d_in]``, ``B [K, d_out, r]``::

    y[k*m:(k+1)*m] = x_k @ W.T + bias + scale * (xa_k @ A[k].T) @ B[k].T     (xa defaults to x)
"""

from __future__ import annotations

import torch


def multilora_reference(x, weight, bias, A, B, scale: float, xa=None):
    """``y [K*m, d_out]`` in float64, one adapter at a time: the definition the backends are tested against."""
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
