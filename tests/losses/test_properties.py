"""Property test: random small shapes and tilings of per_example_loss (torch path) vs the reference."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from daunce_fast.losses import per_example_loss
from daunce_fast.losses import reference as ref
from daunce_fast.testing import assert_close_to_reference


@settings(max_examples=40, deadline=None)
@given(
    R=st.integers(1, 6),
    T=st.one_of(st.none(), st.integers(1, 4)),
    d=st.integers(1, 7),
    V=st.integers(1, 12),
    rc=st.integers(1, 8),
    vc=st.integers(1, 13),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(["mean", "sum"]),
)
def test_random_shapes_and_tiles(R, T, d, V, rc, vc, bias, seed, reduction):
    g = torch.Generator().manual_seed(seed)
    shape = (R, d) if T is None else (R, T, d)
    h = torch.randn(shape, generator=g, dtype=torch.float64)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, V, shape[:-1], generator=g)
    y = torch.where(torch.rand(shape[:-1], generator=g) < 0.3, torch.full_like(y, -100), y)
    for chunk in ((rc, vc), None):
        hh = h.clone().requires_grad_(True)
        out = per_example_loss(hh, W, y, bias=b, reduction=reduction, backend="torch", chunk_size=chunk)
        hr = h.clone().requires_grad_(True)
        want = ref.per_example_loss(hr, W, y, bias=b, reduction=reduction)
        assert_close_to_reference(out, want, "float64", name=f"loss chunk={chunk}")
        out.sum().backward()
        want.sum().backward()
        assert_close_to_reference(hh.grad, hr.grad, "float64", name=f"dh chunk={chunk}")
