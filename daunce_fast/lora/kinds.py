"""Which copy class wraps which layer type: the registrations, in the order they are consulted.

1. ``nn.Linear`` and transformers' ``Conv1D``           -> :class:`MultiLoRALinear` (lora / full)
2. ``nn.Conv1d/2d/3d``                                   -> ``MultiCopyConv`` (registered by conv.py)
3. ``nn.Embedding``                                      -> :class:`MultiCopyEmbedding` (lora / full)
4. LayerNorm, RMSNorm, GroupNorm, BatchNorm*, InstanceNorm* with parameters -> :class:`MultiCopyNorm`
5. any other module holding parameters                   -> :class:`FallbackCopies` (torch.func)

Importing :mod:`daunce_fast.lora` imports this module, so the registry is complete before any
``attach``.
"""

from __future__ import annotations

from torch import nn

from .copies import register_copy
from .embedding import MultiCopyEmbedding
from .fallback import FallbackCopies
from .layer import MultiLoRALinear, is_conv1d
from .norm import NORM_TYPES, MultiCopyNorm

register_copy(lambda m: isinstance(m, nn.Linear) or is_conv1d(m), MultiLoRALinear)
from . import conv  # noqa: E402, F401  (registers MultiCopyConv second: after linear, before the rest)

register_copy((nn.Embedding,), MultiCopyEmbedding)
register_copy(lambda m: isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None, MultiCopyNorm)


def has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


register_copy(has_parameters, FallbackCopies)
