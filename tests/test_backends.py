import importlib
import shutil

import pytest

import daunce_fast
import daunce_fast.correlation
import daunce_fast.lora
import daunce_fast.losses
from daunce_fast import _backends, _ext
from daunce_fast._backends import (
    BackendUnavailableError,
    dispatch,
    implemented,
    kernel,
    register_kernel,
    select_backend,
)


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
        _ = _ext.C.colstats
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


# ------------------------------------------------------------------------------ kernel registry

# The preference orders each op had before the registry (its IMPLEMENTED tuple), and the label
# its select_backend call used; the registry must reproduce both.
BEFORE = {
    "multilora_linear": ("multilora_linear", ("torch", "triton")),
    "multilora_linear.backward": ("multilora_linear", ("torch", "triton")),
    "losses.row_stats": ("losses.per_example_loss", ("triton", "torch")),
    "losses.row_grad": ("losses.per_example_loss", ("triton", "torch")),
    "correlation.engine": ("correlate", ("cuda", "triton", "cpu", "torch")),
}


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(_backends, "_REGISTRY", {k: dict(v) for k, v in _backends._REGISTRY.items()})
    monkeypatch.setattr(_backends, "_KERNELS", dict(_backends._KERNELS))


def test_every_op_is_registered_in_its_old_preference_order():
    assert set(_backends._REGISTRY) == set(BEFORE)
    for op, (_, order) in BEFORE.items():
        assert implemented(op) == order, op


@pytest.mark.parametrize("op,backend", [(op, b) for op, (_, order) in BEFORE.items() for b in order])
def test_registered_target_imports_where_its_backend_is_live(op, backend):
    if not _backends.backend_status(backend)[0]:
        pytest.skip(f"{backend} not live here: {_backends.backend_status(backend)[1]}")
    module, _, attr = _backends._REGISTRY[op][backend].partition(":")
    assert module.rsplit(".", 1)[-1] == f"{backend}_launch", f"kernels live in {backend}_launch.py"
    fn = kernel(op, backend)
    assert callable(fn) and fn is getattr(importlib.import_module(module), attr)
    assert kernel(op, backend) is fn  # cached


@pytest.mark.parametrize("env", [None, "torch", "cpu", "triton", "cuda"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_dispatch_picks_what_select_backend_picked_before(monkeypatch, device, env):
    if env is None:
        monkeypatch.delenv("DAUNCE_FAST_BACKEND", raising=False)
    else:
        monkeypatch.setenv("DAUNCE_FAST_BACKEND", env)

    def outcome(fn, *args):
        try:
            return fn(*args)
        except BackendUnavailableError as exc:
            return f"error: {exc}"

    for op, (label, order) in BEFORE.items():
        for forced in (None, *_backends.BACKENDS):
            before = outcome(select_backend, label, order, device, forced)
            now = outcome(select_backend, label, implemented(op), device, forced)
            assert now == before, (op, device, forced)
            picked = outcome(lambda *a: dispatch(*a)[0], op, device, forced)
            assert picked == before or (picked.startswith("error") and before.startswith("error")), (op, forced)


def test_register_kernel_is_lazy_and_checks_its_arguments(scratch_registry):
    register_kernel("test.op", "torch", "no_such_module_anywhere:fn")  # nothing imported yet
    register_kernel("test.op", "torch", "no_such_module_anywhere:fn")  # same target again: fine
    assert implemented("test.op") == ("torch",)
    with pytest.raises(ModuleNotFoundError):
        kernel("test.op", "torch")
    with pytest.raises(ValueError, match="already registered"):
        register_kernel("test.op", "torch", "json:loads")
    with pytest.raises(ValueError, match="unknown backend"):
        register_kernel("test.op", "numba", "json:loads")
    with pytest.raises(ValueError, match="module:attr"):
        register_kernel("test.op", "cpu", "json.loads")
    with pytest.raises(BackendUnavailableError, match="no 'cpu' backend"):
        kernel("test.op", "cpu")
    with pytest.raises(KeyError, match="no kernels registered"):
        implemented("test.unknown")
    register_kernel("test.op2", "cpu", "json:dumps")
    register_kernel("test.op2", "torch", "json:loads")
    import json

    assert implemented("test.op2") == ("cpu", "torch")
    expected = ("cpu", json.dumps) if _ext.extension_available() else ("torch", json.loads)
    assert dispatch("test.op2", "cpu") == expected
