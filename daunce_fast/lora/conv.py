"""MultiCopyConv: K perturbed copies (dense "full" deltas or LoRA) of one frozen nn.Conv1d/2d/3d,
computed for all K copies in one call.

Layout (PEFT's, per copy; see ``peft.tuners.lora.layer._ConvNd``)::

    rank "full":  delta_weight [K, C_out, C_in/g, *kernel]   delta_bias [K, C_out] (base has a bias)
    rank r:       lora_A [K, r, C_in, *kernel]               the layer's kernel, stride, padding, dilation
                  lora_B [K, C_out, r/g, 1, ...]             1x1, groups g (PEFT: r divisible by g)

Two ways to run the full-rank copies' convolutions at once (both exact):

- "grouped": the adapter-major batch ``[K*m, C, *S]`` becomes ``[m, K*C, *S]`` and the K weight
  sets one ``[K*C_out, C_in/g, *kernel]`` weight with ``groups = K*g``: one native convolution.
- "im2col": patches ``[K, m, g, C_in/g*prod(kernel), L]`` (padding, stride and dilation applied by
  views) times the per-copy weights in one batched GEMM (einsum over K and g).

"grouped" is the default: on the CPU it was faster on every measured shape (1.4-7x, digits- and
CIFAR-like small CNNs, K=64; bench/results/conv_copies.md). "im2col" is kept, selectable with
``backend="im2col"``, because the GPU comparison (bench_conv_copies.py --gpu: cuDNN grouped
convolution with K*g groups vs cuBLAS batched GEMMs) is still to be run. LoRA copies always run the
frozen base over all K*m rows plus grouped A and B convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .copies import register_copy
from .layer import DeltaOrLoRA, _default_adapter_dtype

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _padding_amounts(base: nn.modules.conv._ConvNd) -> list[tuple[int, int]]:
    """(left, right) zero padding per spatial dim, resolving 'same' as torch does (extra on the right)."""
    n = base.weight.dim() - 2
    if isinstance(base.padding, str):
        if base.padding == "valid":
            return [(0, 0)] * n
        out = []
        for k, d in zip(base.kernel_size, base.dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in base.padding]


def pad_input(x: torch.Tensor, base: nn.modules.conv._ConvNd) -> tuple[torch.Tensor, object]:
    """``(x', padding)`` such that ``conv(x', w, padding=padding)`` equals ``base``'s convolution of ``x``:
    non-zero padding modes are applied here (as nn.ConvNd does), zeros padding is left to the conv."""
    if base.padding_mode == "zeros":
        return x, base.padding
    return F.pad(x, base._reversed_padding_repeated_twice, mode=base.padding_mode), 0


def im2col(x: torch.Tensor, base: nn.modules.conv._ConvNd, kernel_size: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """Patches of ``x [B, C, *S]``: ``[B, C, *kernel, *S_out]`` and ``S_out``, with ``base``'s stride,
    padding (any mode) and dilation, for a kernel of ``kernel_size`` (the layer's, or 1s)."""
    n = x.dim() - 2
    if base.padding_mode == "zeros":
        pads = _padding_amounts(base)
        flat = [a for lr in reversed(pads) for a in lr]
        if any(flat):
            x = F.pad(x, flat)
    else:
        x, _ = pad_input(x, base)
    for i in range(n):
        k, s, d = kernel_size[i], base.stride[i], base.dilation[i]
        # [.., S_i, ..] -> [.., S_out_i, .., span]; then keep every d-th of the span (dilation).
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    # now [B, C, *S_out, *kernel]: move the kernel dims next to C.
    perm = [0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n)]
    x = x.permute(perm)
    return x, tuple(x.shape[2 + n :])


class MultiCopyConv(DeltaOrLoRA):
    """``num_adapters`` perturbed copies of one frozen ``nn.Conv1d/2d/3d`` (any stride, padding incl.
    'same', dilation, groups, bias, padding_mode).

    Input ``[K*m, C_in, *S]`` adapter-major (rows ``k*m:(k+1)*m`` are copy k's); output
    ``[K*m, C_out, *S_out]``. With ``conv = F.conv{N}d(., ., ., stride, padding, dilation, groups)``
    of the base layer, for copy k's rows ``x_k``::

        rank "full":  y_k = conv(x_k, W + delta_weight[k], b + delta_bias[k])
        rank r:       y_k = conv(x_k, W, b) + (alpha / r) * B_k(A_k(dropout(x_k)))
                      A_k = conv(., lora_A[k], stride, padding, dilation)      C_in -> r, the layer's kernel
                      B_k = conv(., lora_B[k], groups=g)                       r -> C_out, 1x1

    ``lora_A`` starts kaiming-uniform (a=sqrt(5)) per slot from ``slot_seed(seed, adapter_id, name)``
    (drawn on the CPU in fp32, so the same on any device and in any chunk), ``lora_B`` and the deltas
    at zero: every copy starts as the base. LoRA with ``groups = g > 1`` follows PEFT: B is a 1x1
    conv with groups g, so ``rank`` must be divisible by g (ValueError otherwise).

    ``dropout`` applies to the LoRA branch's input in training mode (as PEFT); unused by "full".
    ``adapter_dtype``: the adapters' dtype (default: the weight's, fp32 for fp16/bf16 bases).
    ``backend``: None/'auto'/'torch'/'triton' run the grouped convolution (there is no Triton
    convolution kernel; 'triton' is accepted so one backend option can serve every layer kind),
    'grouped' or 'im2col' force one path of the full-rank copies (see the module docstring).
    ``disabled = True`` runs the plain base on any batch (θ0's outputs).
    """

    kind = "full"

    def __init__(
        self,
        base: nn.Module,
        num_adapters: int,
        rank: Union[int, str],
        alpha: float = 1.0,
        dropout: float = 0.0,
        *,
        name: str = "",
        seed: Optional[int] = None,
        adapter_ids: Optional[Sequence[int]] = None,
        adapter_dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
    ):
        if not isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"MultiCopyConv wraps nn.Conv1d/2d/3d, not {type(base).__name__}")
        super().__init__(base, num_adapters, name)
        self.full = rank == "full"
        if not self.full and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ValueError(f"{name or 'MultiCopyConv'}: rank must be a positive int or 'full', got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name or 'MultiCopyConv'}: dropout must be in [0, 1), got {dropout}")
        if backend not in (None, "auto", "torch", "triton", "grouped", "im2col"):
            raise ValueError(
                f"{name or 'MultiCopyConv'}: backend must be None, 'auto', 'torch', 'triton', 'grouped' or "
                f"'im2col', got {backend!r}"
            )
        if base.padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name or 'MultiCopyConv'}: unknown padding_mode {base.padding_mode!r}")
        g = base.groups
        if not self.full and rank % g:
            raise ValueError(
                f"{name or 'MultiCopyConv'}: LoRA on a convolution with groups={g} needs a rank divisible by "
                f"{g} (PEFT's rule: B is a 1x1 conv with groups={g}); got rank={rank}. Use a multiple of {g} "
                f"or rank='full'."
            )
        w = base.weight
        self.nd = w.dim() - 2
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.kind = "full" if self.full else "lora"
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout_p = float(dropout)
        self.backend = backend
        dt = adapter_dtype or _default_adapter_dtype(w.dtype)
        K, kernel = self.num_adapters, tuple(base.kernel_size)
        if self.full:
            self.scaling = 1.0
            self.delta_weight = nn.Parameter(torch.zeros(K, *w.shape, device=w.device, dtype=dt))
            self.delta_bias = (
                nn.Parameter(torch.zeros(K, self.out_channels, device=w.device, dtype=dt))
                if base.bias is not None
                else None
            )
        else:
            self.scaling = self.alpha / rank
            ones = (1,) * self.nd
            self.lora_A = nn.Parameter(torch.empty(K, rank, self.in_channels, *kernel, device=w.device, dtype=dt))
            self.lora_B = nn.Parameter(torch.zeros(K, self.out_channels, rank // g, *ones, device=w.device, dtype=dt))
        self.reset_adapters(adapter_ids if adapter_ids is not None else range(K), seed)

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> int:
        """``m`` (rows per copy); ValueError naming the layer unless ``x`` is ``[K*m, C_in, *S]``."""
        if x.dim() != self.nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name or 'MultiCopyConv'}: input {tuple(x.shape)} must be [K*m, {self.in_channels}, "
                f"{', '.join('S' + str(i) for i in range(self.nd))}] (batched, {self.in_channels} channels) "
                f"for this {type(self.base).__name__}"
            )
        return self.check_segments(x)

    def choose_path(self, x: torch.Tensor) -> str:
        """'grouped' or 'im2col' for the full-rank copies: 'im2col' only when forced by ``backend``."""
        return "im2col" if self.backend == "im2col" else "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base(x)
        m = self.check_input(x)
        if self.full:
            return self._forward_full(x, m)
        return self._forward_lora(x, m)

    def _to_channels(self, x: torch.Tensor, m: int) -> torch.Tensor:
        # [K*m, C, *S] (adapter-major) -> [m, K*C, *S]: copy k's channels become group block k.
        K = self.num_adapters
        return x.reshape(K, m, *x.shape[1:]).transpose(0, 1).reshape(m, -1, *x.shape[2:])

    def _from_channels(self, y: torch.Tensor, m: int) -> torch.Tensor:
        K = self.num_adapters
        return y.reshape(m, K, -1, *y.shape[2:]).transpose(0, 1).reshape(K * m, -1, *y.shape[2:])

    def _forward_full(self, x: torch.Tensor, m: int) -> torch.Tensor:
        base, K = self.base, self.num_adapters
        dt = self.delta_weight.dtype
        # Effective weights W + delta_k: one convolution per copy instead of base + delta convs.
        w_eff = base.weight.to(dt).unsqueeze(0) + self.delta_weight
        b_eff = None if base.bias is None else base.bias.to(dt).unsqueeze(0).expand(K, -1)
        if self.delta_bias is not None:
            b_eff = self.delta_bias if b_eff is None else b_eff + self.delta_bias
        xd = x.to(dt)
        if self.choose_path(x) == "im2col":
            y = self._im2col_conv(xd, m, w_eff, b_eff)
        else:
            xp, padding = pad_input(xd, base)
            y = _CONV[self.nd](
                self._to_channels(xp, m),
                w_eff.reshape(-1, *w_eff.shape[2:]),
                None if b_eff is None else b_eff.reshape(-1),
                base.stride,
                padding,
                base.dilation,
                K * base.groups,
            )
            y = self._from_channels(y, m)
        return y.to(x.dtype)

    def _im2col_conv(self, x: torch.Tensor, m: int, w_eff: torch.Tensor, b_eff: Optional[torch.Tensor]) -> torch.Tensor:
        base, K, g = self.base, self.num_adapters, self.base.groups
        cols, s_out = im2col(x, base, base.kernel_size)  # [K*m, C_in, *kernel, *S_out]
        L = math.prod(s_out)
        cols = cols.reshape(K, m, g, -1, L)  # [K, m, g, C_in/g*prod(kernel), L]
        w = w_eff.reshape(K, g, self.out_channels // g, -1)  # [K, g, C_out/g, C_in/g*prod(kernel)]
        y = torch.einsum("kmgcl,kgoc->kmgol", cols, w).reshape(K, m, self.out_channels, L)
        if b_eff is not None:
            y = y + b_eff[:, None, :, None]
        return y.reshape(K * m, self.out_channels, *s_out)

    def _forward_lora(self, x: torch.Tensor, m: int) -> torch.Tensor:
        base, K = self.base, self.num_adapters
        y = base(x)  # the frozen base on all K*m rows at once
        dt = self.lora_A.dtype
        xa = x.to(dt)
        if self.dropout_p > 0 and self.training:
            xa = F.dropout(xa, self.dropout_p, True)
        xp, padding = pad_input(xa, base)
        conv = _CONV[self.nd]
        h = conv(
            self._to_channels(xp, m),
            self.lora_A.reshape(-1, *self.lora_A.shape[2:]),
            None,
            base.stride,
            padding,
            base.dilation,
            K,
        )
        h = conv(h, self.lora_B.reshape(-1, *self.lora_B.shape[2:]), None, 1, 0, 1, K * base.groups)
        return y + (self.scaling * self._from_channels(h, m)).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, num_adapters={self.num_adapters}, rank={self.rank!r}, alpha={self.alpha}, "
            f"dropout={self.dropout_p}, backend={self.backend!r}"
        )


register_copy((nn.Conv1d, nn.Conv2d, nn.Conv3d), MultiCopyConv)
