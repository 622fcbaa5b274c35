"""The correlation engines in the backend registry: op ``correlation.engine``, one engine class
per backend (that backend's kernel set: standardise, score tile, top-k selection), best first.

Every engine has the constructor ``(K, M, *, method, device, precision, compute64, tile)``;
``correlate``/``topk`` (api.py) and the rank-sharded versions (sharded.py) pick one with
``select_backend(op, implemented(ENGINE_OP), device_type, backend)`` and build it through
``kernel(ENGINE_OP, name)``. Registering imports nothing: each target loads on first use.
"""

from __future__ import annotations

from .._backends import register_kernel

ENGINE_OP = "correlation.engine"

for _backend, _target in (
    ("cuda", "cuda_launch:CudaEngine"),
    ("triton", "triton_launch:TritonEngine"),
    ("cpu", "cpu_launch:CpuEngine"),
    ("torch", "torch_launch:TorchEngine"),
):
    register_kernel(ENGINE_OP, _backend, f"daunce_fast.correlation.{_target}")
