"""Backend registry: which backends are live here and which one each call uses.

Backends:
  ``torch``  plain PyTorch; the float64 reference implementations and the portable path.
  ``cpu``    the compiled C++/OpenMP kernels of ``daunce_fast._C``.
  ``triton`` Triton kernels; live with a CUDA device, or on CPU tensors when
             ``TRITON_INTERPRET=1`` was set before Triton was imported (tests only: slow).
  ``cuda``   the CUDA kernels of ``daunce_fast._C`` (built when nvcc was found) on a CUDA device.

Each op declares the backends it implements, in order of preference, in one place: its
package's ``ops.py`` calls :func:`register_kernel` once per backend with a lazy ``"module:attr"``
target (bitsandbytes-style), so registering imports nothing and a backend's module (and triton,
or the compiled extension) is imported only when :func:`kernel` first looks it up.
:func:`select_backend` takes the first live implemented backend that fits the data's device;
:func:`dispatch` does that for a registered op and returns its kernel. ``backend=`` or the
environment variable ``DAUNCE_FAST_BACKEND`` forces one, and a forced backend that the op lacks,
that is not live, or that cannot run on the data's device raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

BACKENDS = ("torch", "cpu", "triton", "cuda")
ENV_VAR = "DAUNCE_FAST_BACKEND"
# Which data devices each backend can take.
_DEVICES = {"torch": ("cpu", "cuda"), "cpu": ("cpu",), "triton": ("cuda", "cpu"), "cuda": ("cuda",)}


class BackendUnavailableError(RuntimeError):
    """A backend was requested that this op, this machine or this data's device cannot run."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cuda_device() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _triton_importable() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install must not break the other backends
        return False, f"import triton failed: {exc}"
    return True, ""


def backend_status(name: str) -> tuple[bool, str]:
    """(live, reason it is not) for one backend name."""
    if name == "torch":
        return True, ""
    if name == "cpu":
        from ._ext import extension_available

        return (
            (True, "")
            if extension_available()
            else (False, "the compiled extension daunce_fast._C is not built (pip install -e .)")
        )
    if name == "triton":
        ok, why = _triton_importable()
        if not ok:
            return False, why
        if _cuda_device() or triton_interpret():
            return True, ""
        return False, "no CUDA device (Triton runs on CPU tensors only with TRITON_INTERPRET=1)"
    if name == "cuda":
        from ._ext import build_info

        info = build_info()
        if info is None:
            return False, "the compiled extension daunce_fast._C is not built (pip install -e .)"
        if not info.get("cuda"):
            return False, "daunce_fast._C was built without CUDA (nvcc not found or DAUNCE_FAST_CUDA=0)"
        if not _cuda_device():
            return False, "no CUDA device is visible to torch"
        return True, ""
    raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def available_backends() -> list[str]:
    """The backends live on this machine, e.g. ``['torch', 'cpu']`` on a CPU-only machine."""
    return [b for b in BACKENDS if backend_status(b)[0]]


def requested_backend(backend: str | None = None) -> str | None:
    """The explicitly requested backend: the argument, else ``$DAUNCE_FAST_BACKEND``, else None."""
    name = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if name is not None:
        name = name.strip().lower()
        if name not in BACKENDS:
            src = "backend=" if backend is not None else f"{ENV_VAR}="
            raise BackendUnavailableError(f"{src}{name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return name


def select_backend(op: str, implemented: Sequence[str], device_type: str = "cpu", backend: str | None = None) -> str:
    """Pick the backend for one call of ``op``.

    ``implemented``: the op's backends, best first. ``device_type``: 'cpu' or 'cuda', where the
    data lives. Without a request, the first live implemented backend that runs on that device
    (Triton on CPU tensors is never picked automatically: the interpreter is for tests).
    """
    dev = "cuda" if str(device_type).startswith("cuda") else "cpu"
    want = requested_backend(backend)
    if want is not None:
        if want not in implemented:
            raise BackendUnavailableError(f"{op}: no {want!r} backend; it has {', '.join(implemented)}")
        live, why = backend_status(want)
        if not live:
            raise BackendUnavailableError(f"{op}: backend {want!r} is not available here: {why}")
        if dev not in _DEVICES[want] or (want == "triton" and dev == "cpu" and not triton_interpret()):
            raise BackendUnavailableError(f"{op}: backend {want!r} cannot run on {dev} data")
        return want
    for name in implemented:
        if dev not in _DEVICES[name] or (name == "triton" and dev == "cpu"):
            continue
        if backend_status(name)[0]:
            return name
    raise BackendUnavailableError(f"{op}: none of its backends ({', '.join(implemented)}) can run on {dev} data here")


# op -> {backend: "module:attr"}; dicts keep insertion order, which is the op's preference order.
_REGISTRY: dict[str, dict[str, str]] = {}
_KERNELS: dict[tuple[str, str], Callable[..., Any]] = {}


def register_kernel(op: str, backend: str, target: str) -> None:
    """Declare that ``backend`` implements ``op`` with the callable at ``target`` ("module:attr").

    Nothing is imported here. Registration order is the op's preference order (best first);
    registering the same (op, backend) again with the same target is a no-op, with another
    target a ValueError (one op has one kernel per backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"register_kernel({op!r}): unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, sep, attr = target.partition(":")
    if not (module and sep and attr):
        raise ValueError(f"register_kernel({op!r}, {backend!r}): target must be 'module:attr', got {target!r}")
    kernels = _REGISTRY.setdefault(op, {})
    if kernels.get(backend, target) != target:
        raise ValueError(f"register_kernel({op!r}, {backend!r}): already registered as {kernels[backend]!r}")
    kernels[backend] = target


def implemented(op: str) -> tuple[str, ...]:
    """The backends registered for ``op``, best first (KeyError for an op nobody registered)."""
    if op not in _REGISTRY:
        raise KeyError(f"no kernels registered for op {op!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return tuple(_REGISTRY[op])


def kernel(op: str, backend: str) -> Callable[..., Any]:
    """The callable registered for (op, backend), imported on first use and cached.

    BackendUnavailableError when ``backend`` does not implement ``op``. Liveness is not checked
    here (that is :func:`select_backend`'s job): this is the lookup after the choice.
    """
    key = (op, backend)
    fn = _KERNELS.get(key)
    if fn is None:
        target = _REGISTRY.get(op, {}).get(backend)
        if target is None:
            raise BackendUnavailableError(f"{op}: no {backend!r} backend; it has {', '.join(implemented(op))}")
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        _KERNELS[key] = fn
    return fn


def dispatch(op: str, device_type: str = "cpu", backend: str | None = None) -> tuple[str, Callable[..., Any]]:
    """(backend name, kernel) for one call of a registered ``op`` on data on ``device_type``:
    ``select_backend(op, implemented(op), device_type, backend)``, then :func:`kernel`."""
    name = select_backend(op, implemented(op), device_type, backend)
    return name, kernel(op, name)
