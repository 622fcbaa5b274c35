"""Backend choice and lazy imports of daunce_fast.losses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daunce_fast._backends import BackendUnavailableError
from daunce_fast.losses import api, per_example_loss

ROOT = Path(__file__).resolve().parents[2]


def test_import_does_not_import_triton():
    code = (
        "import sys, daunce_fast.losses as L; import daunce_fast.losses.torch_launch, daunce_fast.losses.reference; "
        "assert 'triton' not in sys.modules, 'triton imported'; print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_auto_backend_on_cpu_is_torch_and_float64_never_triton():
    h = torch.randn(2, 3)
    assert api.pick_backend("x", h, None) == "torch"
    assert api.pick_backend("x", h.double(), None) == "torch"


def test_forced_backends():
    h, W, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 4, 2])
    with pytest.raises(BackendUnavailableError):
        per_example_loss(h, W, y, backend="cuda")
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        with pytest.raises(TypeError, match="float64"):
            per_example_loss(h.double().to(dev), W.double().to(dev), y.to(dev), backend="triton")
