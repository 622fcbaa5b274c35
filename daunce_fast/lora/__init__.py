"""Batched multi-LoRA training: K adapters on one frozen base in one forward/backward pass.

Adapter-major batches: a tensor of leading size ``K*m`` holds adapter 0's ``m`` rows, then
adapter 1's, and so on. Importing this package imports torch but never triton (the Triton
kernels load on first use on a CUDA device, or when ``backend='triton'`` is forced).

Copy layers (:class:`CopyLayer`, registered per layer type in kinds.py): MultiLoRALinear
(nn.Linear, Conv1D), MultiCopyConv (nn.Conv*), MultiCopyEmbedding, MultiCopyNorm (LayerNorm,
GroupNorm, BatchNorm*, ...), FallbackCopies (any other module with parameters, torch.func).

  MultiLoRALinear(base_linear, num_adapters, rank, alpha, dropout=0.0)   rank: int or "full"
  attach(model, num_adapters, rank, alpha, target_modules, dropout=0.0, seed=None, adapter_ids=None,
         *, fallback=True, batchnorm=None) -> params
  attach_copies(same arguments) -> (model, params)     also when the model itself is the target
  make_copies_independent(model, num_adapters, batchnorm="eval")   every BatchNorm, per copy
  detach(model); reset_adapters(model, adapter_ids, seed); adapters_disabled(model); summary(model)
  adapter_state(model) / load_adapter_state(model, state); lora_modules (= copy_layers) / adapter_parameters
  save_peft(model, k, dir) / load_peft(model, k, dir)
  clip_grad_norm_per_adapter, adapter_grad_norms, split_loss, per_adapter_loss, scale_lr_per_adapter
  multilora_linear(x, weight, bias, A, B, scale, x_lora=None, backend=None)   the op itself
"""

from . import kinds  # noqa: F401  (the layer-type registrations; before any attach)
from .attach import (
    adapter_parameters,
    adapter_state,
    adapters_disabled,
    attach,
    attach_copies,
    copy_layers,
    detach,
    load_adapter_state,
    lora_modules,
    matches_target,
    reset_adapters,
    select_targets,
    summary,
)
from .copies import CopyLayer, copy_class_for, expected_rows, register_copy
from .embedding import MultiCopyEmbedding
from .fallback import FallbackCopies
from .layer import MultiLoRALinear, slot_seed
from .norm import MultiCopyNorm, make_copies_independent
from .ops import multilora_linear
from .peft_io import load_peft, save_peft
from .per_adapter import (
    adapter_grad_norms,
    clip_grad_norm_per_adapter,
    per_adapter_loss,
    scale_lr_per_adapter,
    split_loss,
)

__all__ = [
    "CopyLayer",
    "expected_rows",
    "register_copy",
    "copy_class_for",
    "MultiLoRALinear",
    "MultiCopyEmbedding",
    "MultiCopyNorm",
    "FallbackCopies",
    "make_copies_independent",
    "attach",
    "attach_copies",
    "select_targets",
    "summary",
    "copy_layers",
    "detach",
    "reset_adapters",
    "adapters_disabled",
    "adapter_state",
    "load_adapter_state",
    "lora_modules",
    "adapter_parameters",
    "matches_target",
    "slot_seed",
    "save_peft",
    "load_peft",
    "clip_grad_norm_per_adapter",
    "adapter_grad_norms",
    "split_loss",
    "per_adapter_loss",
    "scale_lr_per_adapter",
    "multilora_linear",
]
