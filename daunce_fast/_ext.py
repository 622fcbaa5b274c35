"""Lazy access to the compiled extension ``daunce_fast._C``.

Nothing here imports the extension at module import time. ``C.some_kernel`` loads it on first
use and, when it was not built, raises :class:`ExtensionNotBuiltError` saying how to build it.
"""

from __future__ import annotations

import importlib
from typing import Any

BUILD_HINT = (
    "daunce_fast._C (the compiled CPU/CUDA kernels) is not built or failed to load. Build it from the "
    "source tree with `pip install -e .` (or `python setup.py build_ext --inplace`); CUDA kernels are "
    "compiled when nvcc is on PATH (DAUNCE_FAST_CUDA=0|1|auto). The torch and Triton backends work "
    "without it: pass backend='torch' or set DAUNCE_FAST_BACKEND=torch."
)


class ExtensionNotBuiltError(ImportError):
    """The compiled extension is missing; the message says how to build it."""


_module: Any = None
_error: BaseException | None = None


def load_extension():
    """Import and return ``daunce_fast._C``, or raise :class:`ExtensionNotBuiltError`."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is None:
        try:
            _module = importlib.import_module("daunce_fast._C")
            return _module
        except ImportError as exc:  # missing file, or undefined symbols / wrong Python
            _error = exc
    raise ExtensionNotBuiltError(f"{BUILD_HINT}\n(import error: {_error})") from _error


def extension_available() -> bool:
    try:
        load_extension()
        return True
    except ExtensionNotBuiltError:
        return False


def build_info() -> dict | None:
    """What the extension was compiled with (see csrc/info.cpp), or None when it is absent."""
    try:
        return dict(load_extension().build_info())
    except ExtensionNotBuiltError:
        return None


class _LazyExtension:
    """``C.name`` resolves ``daunce_fast._C.name`` on first use."""

    def __getattr__(self, name: str):
        return getattr(load_extension(), name)


C = _LazyExtension()
