"""Float64 oracle of MultiCopyConv: a plain loop over the K copies, one ``F.conv*d`` call each."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(x: torch.Tensor, base: nn.modules.conv._ConvNd, w: torch.Tensor, b: Optional[torch.Tensor], **over):
    """``base``'s convolution (stride, padding incl. 'same' and non-zero modes, dilation, groups) of
    ``x`` with weight ``w`` and bias ``b``; keyword arguments override the layer's hyperparameters."""
    args = {
        "stride": base.stride,
        "padding": base.padding,
        "dilation": base.dilation,
        "groups": base.groups,
    }
    args.update(over)
    if base.padding_mode != "zeros" and "padding" not in over:
        x = F.pad(x, base._reversed_padding_repeated_twice, mode=base.padding_mode)
        args["padding"] = 0
    return _CONV[w.dim() - 2](x, w, b, **args)


def conv_copies_reference(
    x: torch.Tensor,
    base: nn.modules.conv._ConvNd,
    *,
    delta_weight: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    lora_A: Optional[torch.Tensor] = None,
    lora_B: Optional[torch.Tensor] = None,
    scaling: float = 1.0,
) -> torch.Tensor:
    """K copies of ``base`` on adapter-major ``x [K*m, C_in, *S]``, in float64; ``[K*m, C_out, *S_out]``.

    K is the leading dim of the given adapter tensors. For copy k's rows ``x_k`` (``conv`` = the
    base's F.conv*d with its stride, padding, dilation, groups)::

        full (delta_weight [K, C_out, C_in/g, *kernel], delta_bias [K, C_out] or None):
            y_k = conv(x_k, W + delta_weight[k], b + delta_bias[k])
        LoRA (lora_A [K, r, C_in, *kernel], lora_B [K, C_out, r/g, 1, ...]):
            y_k = conv(x_k, W, b) + scaling * conv(conv(x_k, lora_A[k], groups=1), lora_B[k], 1x1, groups=g)
    """
    d = torch.float64
    ts = [t for t in (delta_weight, lora_A) if t is not None]
    if len(ts) != 1:
        raise ValueError("give exactly one of delta_weight (full-rank copies) or lora_A/lora_B (LoRA copies)")
    K = ts[0].shape[0]
    if x.shape[0] % K:
        raise ValueError(f"input batch {x.shape[0]} is not K={K} adapter-major segments")
    m = x.shape[0] // K
    W = base.weight.detach().to(d)
    b = None if base.bias is None else base.bias.detach().to(d)
    outs = []
    for k in range(K):
        xk = x[k * m : (k + 1) * m].to(d)
        if delta_weight is not None:
            bk = b
            if delta_bias is not None:
                bk = delta_bias[k].to(d) if bk is None else bk + delta_bias[k].to(d)
            outs.append(_conv(xk, base, W + delta_weight[k].to(d), bk))
        else:
            assert lora_A is not None and lora_B is not None
            h = _conv(xk, base, lora_A[k].to(d), None, groups=1)
            h = _conv(h, base, lora_B[k].to(d), None, stride=1, padding=0, dilation=1)
            outs.append(_conv(xk, base, W, b) + scaling * h)
    return torch.cat(outs)
