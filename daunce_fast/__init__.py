"""daunce_fast: the fast backend for DAUNCE training-data attribution.

Importing this package is cheap: it imports neither torch, triton nor the compiled extension and
makes no CUDA call. Public names are resolved on first use:

  correlate, topk              streaming tiled correlation of loss matrices   (daunce_fast.correlation)
  storage                      streaming / memory-mapped safetensors           (daunce_fast.storage)
  lora                         batched multi-LoRA layers and helpers          (daunce_fast.lora)
  losses                       fused per-example loss head, DAUNCE objectives (daunce_fast.losses)
  Daunce                       the end-to-end pipeline                         (daunce_fast.daunce)
  distributed                  process groups, agreement; sharded topk / correlate over ranks
  evaluation                   attribution quality: metrics, LDS ground truth
  demos                        `daunce-fast demo` and the bundled example tasks
  available_backends, select_backend, BackendUnavailableError                  (backend registry)
"""

from __future__ import annotations

from ._lazy import lazy_names
from ._version import __version__

_LAZY = {
    "available_backends": ("._backends", "available_backends"),
    "select_backend": ("._backends", "select_backend"),
    "BackendUnavailableError": ("._backends", "BackendUnavailableError"),
    "ExtensionNotBuiltError": ("._ext", "ExtensionNotBuiltError"),
    "build_info": ("._ext", "build_info"),
    "correlate": (".correlation", "correlate"),
    "topk": (".correlation", "topk"),
    "Daunce": (".daunce", "Daunce"),
}
_SUBMODULES = (
    "storage",
    "correlation",
    "lora",
    "losses",
    "daunce",
    "testing",
    "integrations",
    "distributed",
    "evaluation",
    "demos",
)

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__, _SUBMODULES)
