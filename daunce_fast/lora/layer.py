"""MultiLoRALinear: K adapters (LoRA or dense "full" deltas) on one frozen, shared linear layer."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .copies import CopyLayer
from .ops import multilora_linear


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): ``y = x @ weight + bias`` with ``weight [d_in, d_out]``."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    )


def slot_seed(seed: int, adapter_id: int, layer_name: str) -> int:
    """The seed of adapter ``adapter_id``'s A matrix in layer ``layer_name``: a hash of the three only,
    so an adapter's initialisation does not depend on which chunk or slot it is trained in."""
    digest = hashlib.blake2b(f"{int(seed)}|{int(adapter_id)}|{layer_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _default_adapter_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    # PEFT keeps adapter weights in fp32 when the base is fp16/bf16 (autocast_adapter_dtype=True).
    return torch.float32 if weight_dtype in (torch.float16, torch.bfloat16) else weight_dtype


class DeltaOrLoRA(CopyLayer):
    """What the copy layers of weight matrices and kernels share (MultiLoRALinear, MultiCopyConv):
    either full-rank deltas ``delta_weight [K, *W.shape]`` / ``delta_bias [K, d_out]`` (rank
    "full", zero-init) or LoRA factors ``lora_A [K, r, ...]`` (kaiming-uniform, a=sqrt(5), per slot
    from ``slot_seed(seed, adapter_id, name)``) and ``lora_B [K, d_out, r, ...]`` (zero-init).
    Subclasses set ``self.full``, ``self.rank`` and these parameters."""

    full: bool
    rank: Union[int, str]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.state_items()]

    def state_items(self) -> list[tuple[str, nn.Parameter]]:
        if self.full:
            items = [("delta_weight", self.delta_weight)]
            if self.delta_bias is not None:
                items.append(("delta_bias", self.delta_bias))
            return items
        return [("lora_A", self.lora_A), ("lora_B", self.lora_B)]

    def kind_label(self) -> str:
        return "full" if self.full else f"lora r={self.rank}"

    @torch.no_grad()
    def reset_adapters(self, adapter_ids: Iterable[int], seed: Optional[int] = None) -> None:
        """Re-initialise every slot: slot ``i`` becomes copy ``adapter_ids[i]`` (B / deltas zeroed;
        A kaiming-uniform from ``slot_seed(seed, adapter_ids[i], self.name)``, or from torch's global
        generator when ``seed`` is None, as PEFT does)."""
        ids = list(adapter_ids)
        if len(ids) != self.num_adapters:
            raise ValueError(
                f"{self.name or type(self).__name__}: {len(ids)} adapter ids for {self.num_adapters} slots"
            )
        if self.full:
            self.delta_weight.zero_()
            if self.delta_bias is not None:
                self.delta_bias.zero_()
            return
        self.lora_B.zero_()
        for i, aid in enumerate(ids):
            # Drawn on the CPU in fp32 with PEFT's fan-in (the product of A's trailing dimensions),
            # so the same (seed, id, layer) gives the same A on any device, in any slot or chunk.
            buf = torch.empty(self.lora_A.shape[1:])
            gen = torch.Generator().manual_seed(slot_seed(seed, aid, self.name)) if seed is not None else None
            nn.init.kaiming_uniform_(buf, a=math.sqrt(5), generator=gen)
            self.lora_A[i].copy_(buf)


class MultiLoRALinear(DeltaOrLoRA):
    """``num_adapters`` adapters on one frozen ``nn.Linear`` (or transformers ``Conv1D``).

    Input ``[K*m, d_in]`` or ``[K*m, T, d_in]``, adapter-major: the first ``m`` leading rows are
    adapter 0's, the next ``m`` adapter 1's, and so on. For the rows of adapter ``k``::

        rank r:       y = x @ W.T + bias + (alpha / r) * (dropout(x) @ lora_A[k].T) @ lora_B[k].T
        rank "full":  y = x @ (W + delta_weight[k]).T + bias + delta_bias[k]

    ``lora_A [K, r, d_in]`` starts as PEFT initialises it (kaiming-uniform, a=sqrt(5)), ``lora_B
    [K, d_out, r]`` and the full-rank deltas at zero, so every adapter starts as the base model.
    The base's parameters are frozen (``requires_grad=False``) and shared.

    ``seed``/``adapter_ids``: slot ``i``'s A comes from a generator seeded by
    ``slot_seed(seed, adapter_ids[i], name)`` only (see :meth:`reset_adapters`).
    ``backend``: None (auto), 'torch' or 'triton', passed to :func:`multilora_linear`.

    A :class:`CopyLayer` of kind ``"full"`` or ``"lora"``: reads of attributes it does not define
    (``layer.weight``, ``layer.bias``) fall through to the frozen base, so they are θ0's.
    """

    def __init__(
        self,
        base_linear: nn.Module,
        num_adapters: int,
        rank: Union[int, str],
        alpha: float,
        dropout: float = 0.0,
        *,
        name: str = "",
        seed: Optional[int] = None,
        adapter_ids: Optional[Sequence[int]] = None,
        adapter_dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
    ):
        if not (isinstance(base_linear, nn.Linear) or is_conv1d(base_linear)):
            raise TypeError(f"MultiLoRALinear wraps nn.Linear or transformers Conv1D, not {type(base_linear).__name__}")
        full = rank == "full"
        if not full and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int or 'full', got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(base_linear, num_adapters, name)
        self.full = full
        self.kind = "full" if full else "lora"
        self.fan_in_fan_out = is_conv1d(base_linear)
        w = base_linear.weight
        self.in_features, self.out_features = (
            (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        )
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout_p = float(dropout)
        self.backend = backend
        dt = adapter_dtype or _default_adapter_dtype(w.dtype)
        K, d_in, d_out = self.num_adapters, self.in_features, self.out_features
        if self.full:
            self.scaling = 1.0
            self.delta_weight = nn.Parameter(torch.zeros(K, d_out, d_in, device=w.device, dtype=dt))
            self.delta_bias = (
                nn.Parameter(torch.zeros(K, d_out, device=w.device, dtype=dt)) if base_linear.bias is not None else None
            )
        else:
            self.scaling = self.alpha / rank
            self.lora_A = nn.Parameter(torch.empty(K, rank, d_in, device=w.device, dtype=dt))
            self.lora_B = nn.Parameter(torch.zeros(K, d_out, rank, device=w.device, dtype=dt))
        self.reset_adapters(adapter_ids if adapter_ids is not None else range(K), seed)

    def base_weight(self) -> torch.Tensor:
        """The frozen weight as ``[d_out, d_in]`` (a transposed view for Conv1D)."""
        return self.base.weight.t() if self.fan_in_fan_out else self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base(x)
        K = self.num_adapters
        if x.dim() < 2 or x.shape[0] % K or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self.name or 'MultiLoRALinear'}: input {tuple(x.shape)} must be [K*m, ..., "
                f"{self.in_features}] with K={K} adapter-major segments on the first dimension"
            )
        self.check_segments(x)  # and the forward's batch size, where the caller declared it
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        W, bias = self.base_weight(), self.base.bias
        if self.full:
            # One bmm with the effective weights W + delta_k instead of the shared GEMM plus a delta
            # bmm plus an add: half the products and no extra [K*m, d_out] pass, forward and
            # backward. Forming W + delta costs K*d_out*d_in, never more than one GEMM row block.
            dt = self.delta_weight.dtype
            xk = x2.view(K, -1, self.in_features).to(dt)
            w_eff = W.to(dt).unsqueeze(0) + self.delta_weight
            b_eff = None if bias is None else bias.to(dt).unsqueeze(0)
            if self.delta_bias is not None:
                b_eff = self.delta_bias if b_eff is None else b_eff + self.delta_bias
            if b_eff is None:
                y = torch.bmm(xk, w_eff.transpose(1, 2))
            else:
                y = torch.baddbmm(b_eff.unsqueeze(1), xk, w_eff.transpose(1, 2))
            y = y.to(x2.dtype).view(-1, self.out_features)
        else:
            xa = F.dropout(x2, self.dropout_p, True) if (self.dropout_p > 0 and self.training) else None
            y = multilora_linear(x2, W, bias, self.lora_A, self.lora_B, self.scaling, x_lora=xa, backend=self.backend)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, in_features={self.in_features}, out_features={self.out_features}, "
            f"num_adapters={self.num_adapters}, rank={self.rank!r}, alpha={self.alpha}, "
            f"dropout={self.dropout_p}, conv1d={self.fan_in_fan_out}"
        )
