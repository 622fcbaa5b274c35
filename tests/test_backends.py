import shutil

import numpy as np
import pytest

import daunce_fast
from daunce_fast import _backends, _ext
from daunce_fast._backends import BackendUnavailableError, select_backend


def test_available_backends_order_and_content():
    live = daunce_fast.available_backends()
    assert live[0] == "torch"
    assert set(live) <= set(_backends.BACKENDS)
    assert ("cpu" in live) == _ext.extension_available()


def test_auto_selection_prefers_compiled_cpu(monkeypatch):
    monkeypatch.delenv("DAUNCE_FAST_BACKEND", raising=False)
    expected = "cpu" if _ext.extension_available() else "torch"
    assert select_backend("op", ("cuda", "triton", "cpu", "torch"), "cpu") == expected
    # Triton is never chosen automatically for CPU data, even under the interpreter.
    assert select_backend("op", ("triton", "torch"), "cpu") == "torch"


def test_forced_backend_by_argument_and_env(monkeypatch):
    monkeypatch.delenv("DAUNCE_FAST_BACKEND", raising=False)
    assert select_backend("op", ("cpu", "torch"), "cpu", backend="torch") == "torch"
    monkeypatch.setenv("DAUNCE_FAST_BACKEND", "torch")
    assert select_backend("op", ("cpu", "torch"), "cpu") == "torch"
    # the argument wins over the environment
    if _ext.extension_available():
        assert select_backend("op", ("cpu", "torch"), "cpu", backend="cpu") == "cpu"


def test_forced_backend_errors(monkeypatch):
    monkeypatch.delenv("DAUNCE_FAST_BACKEND", raising=False)
    with pytest.raises(BackendUnavailableError, match="not a backend"):
        select_backend("op", ("torch",), "cpu", backend="numba")
    with pytest.raises(BackendUnavailableError, match="no 'cpu' backend"):
        select_backend("myop", ("triton", "torch"), "cpu", backend="cpu")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        select_backend("op", ("cuda", "torch"), "cpu", backend="cuda")
    monkeypatch.setenv("DAUNCE_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError):
        select_backend("op", ("cuda", "torch"), "cpu")


def test_missing_extension_error_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", ImportError("simulated: no _C"))
    with pytest.raises(_ext.ExtensionNotBuiltError, match="pip install -e"):
        _ext.C.colstats
    assert not _ext.extension_available()
    assert "cpu" not in daunce_fast.available_backends()
    assert select_backend("op", ("cpu", "torch"), "cpu") == "torch"
    with pytest.raises(BackendUnavailableError, match="not built"):
        select_backend("op", ("cpu", "torch"), "cpu", backend="cpu")


def test_extension_built_with_cuda_when_nvcc_present():
    info = daunce_fast.build_info()
    assert info is not None, "the extension must be built for the test suite (pip install -e .)"
    assert info["openmp"] in (True, False)
    import os

    if shutil.which("nvcc") and os.environ.get("DAUNCE_FAST_CUDA", "auto") != "0":
        assert info["cuda"], "nvcc is on PATH but the extension was built without CUDA kernels"
        assert "90" in info["cuda_archs"] or os.environ.get("DAUNCE_FAST_CUDA_ARCHS")
