"""Test configuration.

Without a CUDA device, Triton kernels run under the interpreter: TRITON_INTERPRET=1 has to be
set before any kernel is defined, so it is set here, before the test modules import anything.
Tests marked ``gpu`` are skipped (with the reason) when no CUDA device is visible.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible); run bench/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, seeded numpy generator per test (seed printed on failure via the test id)."""
    import numpy as np

    return np.random.default_rng(12345)
