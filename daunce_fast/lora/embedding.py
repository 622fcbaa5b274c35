"""MultiCopyEmbedding: K perturbed copies (LoRA or full-rank deltas) of one frozen ``nn.Embedding``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .copies import CopyLayer
from .layer import _default_adapter_dtype, slot_seed


class MultiCopyEmbedding(CopyLayer):
    """``num_adapters`` copies of one frozen ``nn.Embedding`` (table ``W [V, D]``).

    Input ids ``[K*m, ...]`` (long), adapter-major on the first dimension. For copy ``k``'s rows::

        rank r:       y = W[ids] + (alpha / r) * lora_A[k].T[ids] @ lora_B[k].T
        rank "full":  y = W[ids] + delta[k][ids]

    ``lora_A [K, r, V]``, ``lora_B [K, D, r]``: PEFT's layout for embeddings, initialised the
    reverse of linear LoRA as PEFT does (A zeros, B standard normal, from
    ``slot_seed(seed, adapter_id, name)`` when ``seed`` is set); ``delta [K, V, D]`` starts at zero.
    ``padding_idx``: as PEFT (which passes the base's ``padding_idx`` to ``F.embedding`` for the A
    lookup) and as ``nn.Embedding``, the padding row is looked up like any other row but never
    receives a gradient, so it stays at its initial zero. ``max_norm`` (which renormalises the
    table in place) is refused; ``scale_grad_by_freq`` and ``sparse`` only change the base's
    gradient, which is frozen. No dropout (PEFT applies none to embeddings).
    """

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
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"MultiCopyEmbedding wraps nn.Embedding, not {type(base).__name__}")
        if base.max_norm is not None:
            raise ValueError(
                f"{name or 'embedding'}: nn.Embedding with max_norm renormalises its table in place on every "
                "lookup, which would change θ0; build the model with max_norm=None to perturb it"
            )
        full = rank == "full"
        if not full and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int or 'full', got {rank!r}")
        super().__init__(base, num_adapters, name)
        self.full = full
        self.kind = "full" if full else "lora"
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout_p = 0.0
        w = base.weight
        K, V, D = self.num_adapters, base.num_embeddings, base.embedding_dim
        dt = adapter_dtype or _default_adapter_dtype(w.dtype)
        if full:
            self.scaling = 1.0
            self.delta_weight = nn.Parameter(torch.zeros(K, V, D, device=w.device, dtype=dt))
        else:
            self.scaling = self.alpha / rank
            self.lora_A = nn.Parameter(torch.zeros(K, rank, V, device=w.device, dtype=dt))
            self.lora_B = nn.Parameter(torch.empty(K, D, rank, device=w.device, dtype=dt))
        self.reset_adapters(adapter_ids if adapter_ids is not None else range(K), seed)

    def state_items(self) -> list[tuple[str, nn.Parameter]]:
        if self.full:
            return [("delta_weight", self.delta_weight)]
        return [("lora_A", self.lora_A), ("lora_B", self.lora_B)]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.state_items()]

    def kind_label(self) -> str:
        return "full" if self.full else f"lora r={self.rank}"

    @torch.no_grad()
    def reset_adapters(self, adapter_ids: Iterable[int], seed: Optional[int] = None) -> None:
        """Slot ``i`` becomes copy ``adapter_ids[i]``: A / delta zeroed, B standard normal drawn on
        the CPU from ``slot_seed(seed, adapter_ids[i], name)`` (torch's global generator when
        ``seed`` is None)."""
        ids = list(adapter_ids)
        if len(ids) != self.num_adapters:
            raise ValueError(f"{len(ids)} adapter ids for {self.num_adapters} slots")
        if self.full:
            self.delta_weight.zero_()
            return
        self.lora_A.zero_()
        for i, aid in enumerate(ids):
            gen = torch.Generator().manual_seed(slot_seed(seed, aid, self.name)) if seed is not None else None
            self.lora_B[i].copy_(torch.randn(self.lora_B.shape[1:], generator=gen))

    def _lookup(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``table[k][ids[k]]`` for per-copy tables ``[K, V, X]`` and ids ``[K, n]`` -> ``[K, n, X]``,
        with no gradient into the padding row (nn.Embedding's rule)."""
        K, V, X = table.shape
        offset = torch.arange(K, device=ids.device).unsqueeze(1) * V
        rows = F.embedding(ids + offset, table.reshape(K * V, X))
        pad = self.base.padding_idx
        if pad is not None:
            rows = torch.where((ids == pad).unsqueeze(-1), rows.detach(), rows)
        return rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base = self.base
        y = F.embedding(ids, base.weight, base.padding_idx)
        if self.disabled:
            return y
        self.check_segments(ids)
        K = self.num_adapters
        idk = ids.reshape(K, -1)
        if self.full:
            delta = self._lookup(self.delta_weight, idk)
        else:
            after_a = self._lookup(self.lora_A.transpose(1, 2), idk)  # [K, n, r]
            delta = torch.bmm(after_a, self.lora_B.transpose(1, 2)) * self.scaling
        return (y.reshape(K, idk.shape[1], -1) + delta.to(y.dtype)).reshape(y.shape)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, num_embeddings={self.base.num_embeddings}, "
            f"embedding_dim={self.base.embedding_dim}, num_adapters={self.num_adapters}, rank={self.rank!r}, "
            f"alpha={self.alpha}"
        )
