"""The correlation engines in the backend registry: op ``correlation.engine``, one engine class
per backend (that backend's kernel set: standardise, score tile, top-k selection), best first.

Every engine has the constructor ``(K, M, *, method, device, precision, compute64, tile)``;
``correlate``/``topk`` (api.py) and the rank-sharded versions (sharded.py) pick one with
``select_backend(op, implemented(ENGINE_OP), device_type, backend)`` and build it through
``kernel(ENGINE_OP, name)``. Registering imports nothing: each target loads on first use.
That constructor is :class:`Engine`'s; each backend adds its own part in ``_configure``.
"""

from __future__ import annotations

import torch

from .._backends import register_kernel

ENGINE_OP = "correlation.engine"


class Engine:
    """The constructor every engine shares: K models (rows), M test columns, ``method`` ("pearson"
    or "covariance"), ``device``; ``_configure(precision, compute64, tile)`` is the backend's part
    (precision None: the backend's default; compute64: float64 scores where the backend has them;
    tile None: the backend's automatic size). Raises ValueError for an option the backend cannot
    honour."""

    torch_based = True  # False: the engine's standardised tiles are numpy arrays (the cpu backend)

    def __init__(
        self,
        K: int,
        M: int,
        *,
        method: str,
        device,
        precision: str | None = None,
        compute64: bool = False,
        tile: int | None = None,
    ):
        self.K, self.M = K, M
        self.pearson = method == "pearson"
        self.device = torch.device(device)
        self.zb = None
        self._configure(precision, compute64, tile)

    def _configure(self, precision: str | None, compute64: bool, tile: int | None) -> None:
        raise NotImplementedError


for _backend, _target in (
    ("cuda", "cuda_launch:CudaEngine"),
    ("triton", "triton_launch:TritonEngine"),
    ("cpu", "cpu_launch:CpuEngine"),
    ("torch", "torch_launch:TorchEngine"),
):
    register_kernel(ENGINE_OP, _backend, f"daunce_fast.correlation.{_target}")
