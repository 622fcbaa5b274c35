"""torch.compile traces the loss head's custom ops (fullgraph: no graph break) and matches eager,
forward and backward; the fake implementations agree with the real outputs."""

import pytest
import torch

from daunce_fast.losses import ops
from daunce_fast.losses import reference as ref
from daunce_fast.testing import assert_close_to_reference


def _inputs(n=7, d=5, v=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype)
    W = torch.randn(v, d, generator=g).to(dtype)
    b = torch.randn(v, generator=g).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[2] = -1  # an ignored row
    return h, W, b, y


def _ce_sum(h, W, b, y):
    # chunk [3, 4]: tiles of 3 rows x 4 vocabulary entries, so the tiled path really runs
    lse_o, zy = ops.head_stats(h, W, b, y, "torch", [3, 4])
    return torch.logaddexp(lse_o - zy, torch.zeros_like(lse_o)).mul(y >= 0).sum()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_loss_head_stats_compiles_fullgraph_and_matches_eager_and_reference():
    h, W, b, y = _inputs()
    leaves_e = [t.clone().requires_grad_() for t in (h, W, b)]
    leaves_c = [t.clone().requires_grad_() for t in (h, W, b)]
    out_e = _ce_sum(*leaves_e, y)
    out_e.backward()
    # fullgraph=True: a graph break (an untraceable op) is an error, not a silent fallback.
    compiled = torch.compile(_ce_sum, fullgraph=True, backend="aot_eager")
    out_c = compiled(*leaves_c, y)
    out_c.backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    for a, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-6, atol=1e-6)
    # and both against the explicit-logits float64 oracle
    r = ref.per_example_loss(h.double(), W.double(), torch.where(y >= 0, y, -100), bias=b.double(), reduction="sum")
    assert_close_to_reference(out_c, r.sum(), "float32", scale=4, name="loss")


def test_loss_head_grad_compiles_fullgraph_and_matches_eager():
    h, W, b, y = _inputs(seed=1)
    lse_o, _ = ops.head_stats(h, W, b, y, "torch", [])
    go, gy = torch.rand(7), -torch.rand(7)

    def grads(h, W, b, y, lse_o, go, gy):
        return ops.head_grad(h, W, b, y, lse_o, go, gy, True, True, False, "torch", [2, 3])

    eager = grads(h, W, b, y, lse_o, go, gy)
    traced = torch.compile(grads, fullgraph=True, backend="aot_eager")(h, W, b, y, lse_o, go, gy)
    assert traced[2].shape == (0,)  # db not asked for: empty
    for a, e in zip(traced, eager):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fake_implementations_match_real_outputs(dtype):
    h, W, b, y = _inputs(dtype=dtype)
    lse_o, zy = ops.head_stats(h, W, b, y, "torch", [])
    args = (h, W, b, y, lse_o, zy, -zy, True, False, True, "torch", [4])
    torch.library.opcheck(
        torch.ops.daunce_fast.loss_head_stats.default,
        (h, W, None, y, "torch", [3, 4]),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.daunce_fast.loss_head_grad.default, args, test_utils=("test_schema", "test_faketensor")
    )
