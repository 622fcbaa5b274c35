"""Per-example losses of a linear output head and the DAUNCE objectives, without [rows, V] logits.

  per_example_loss(hidden, weight, labels, ...)   -> [R] cross-entropy per example
  margin(hidden, weight, labels, ...)             -> [R] z_y - logsumexp of the other logits
  daunce_objective(hidden, hidden0, weight, labels, weights_c, objective=..., num_adapters=K, ...)
                                                  -> (objective [K], losses [K, m])
  base_stats(hidden0, weight, labels, objective=...) -> BaseStats (precomputed z0 quantities)
  reference                                        explicit-logits oracle (tests)

Backends: "triton" (CUDA; triton_launch.py + triton_kernels.py, imported only when used) and
"torch" (torch_launch.py: chunked, any device), registered in ops.py, which also defines the
custom ops ``daunce_fast::loss_head_stats`` / ``loss_head_grad``. Importing this package imports
torch but not triton.
"""

from . import ops  # noqa: F401 - registers the kernels and the custom ops
from .api import margin, per_example_loss
from .objectives import OBJECTIVES, BaseStats, base_stats, daunce_objective

__all__ = ["per_example_loss", "margin", "daunce_objective", "base_stats", "BaseStats", "OBJECTIVES"]
