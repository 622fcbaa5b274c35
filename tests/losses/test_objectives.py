"""daunce_objective / base_stats (torch chunked path) vs the explicit-logits float64 reference."""

import pytest
import torch

from daunce_fast.losses import BaseStats, base_stats, daunce_objective
from daunce_fast.losses import reference as ref
from daunce_fast.testing import assert_close_to_reference

F64 = torch.float64
OBJS = ["if", "efim", "margin", "blackbox"]


def make(K, m, T, d, V, per_adapter=False, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    tok = () if T is None else (T,)
    M = K * m if per_adapter else m
    h0 = torch.randn(M, *tok, d, generator=g, dtype=F64)
    # adapters = base + a small perturbation (as after a few LoRA steps)
    base_rows = h0 if per_adapter else h0.unsqueeze(0).expand(K, *h0.shape).reshape(K * m, *tok, d)
    h = base_rows + 0.3 * torch.randn(K * m, *tok, d, generator=g, dtype=F64)
    W = torch.randn(V, d, generator=g, dtype=F64) / d**0.5
    b = torch.randn(V, generator=g, dtype=F64)
    y = torch.randint(0, V, (M, *tok), generator=g)
    y = torch.where(torch.rand(y.shape, generator=g) < ignore_frac, torch.full_like(y, -100), y)
    if ignore_frac > 0:
        y[1] = -100  # an example without any valid token: l = m = FO = 0
    c = 2 * torch.rand(K, m, generator=g, dtype=F64)
    return h, h0, W, b, y, c


def check(obj, h, h0, W, b, y, c, K, mask=None, chunk=(5, 4), gamma=0.7, **kw):
    hh = h.clone().requires_grad_(True)
    o, l = daunce_objective(
        hh,
        h0,
        W,
        y,
        c,
        objective=obj,
        gamma=gamma,
        num_adapters=K,
        mask=mask,
        bias=b,
        backend="torch",
        chunk_size=chunk,
        **kw,
    )
    hr = h.clone().requires_grad_(True)
    ro, rl = ref.daunce_objective(
        hr,
        h0 if not isinstance(h0, BaseStats) else REF_H0[0],
        W,
        y,
        c,
        objective=obj,
        gamma=gamma,
        num_adapters=K,
        mask=mask,
        bias=b,
    )
    assert o.shape == (K,) and l.shape == rl.shape
    assert_close_to_reference(o, ro, "float64", name=f"{obj} objective")
    assert_close_to_reference(l, rl, "float64", name=f"{obj} losses")
    wo = torch.linspace(-1, 2, K, dtype=F64)
    wl = torch.randn(l.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    ((o * wo).sum() + (l * wl).sum()).backward()
    ((ro * wo).sum() + (rl * wl).sum()).backward()
    assert_close_to_reference(hh.grad, hr.grad, "float64", name=f"{obj} d/dhidden")
    return o, l


REF_H0 = [None]


@pytest.mark.parametrize("obj", OBJS)
@pytest.mark.parametrize("per_adapter", [False, True])
@pytest.mark.parametrize(
    "T,mask_kind,chunk",
    [
        *[(T, mk, (5, 4)) for T in (4, 1, None) for mk in (None, "bool", "float")],  # tiled path
        (4, None, None),
        (None, "bool", None),
        (1, "float", None),  # direct path (one tile)
    ],
)
def test_objective_matches_reference(obj, per_adapter, T, mask_kind, chunk):
    K, m, d, V = 3, 5, 6, 11
    h, h0, W, b, y, c = make(K, m, T, d, V, per_adapter=per_adapter, seed=hash((obj, per_adapter, T)) % 1000)
    mask = None
    if mask_kind is not None:
        g = torch.Generator().manual_seed(3)
        mask = torch.rand(K, m, generator=g) < 0.5
        mask[0, :2] = True
        mask[-1] = False  # an adapter with an empty subset: R = FO = 0
        if mask_kind == "float":
            mask = mask.to(F64) * (0.5 + torch.rand(K, m, generator=g, dtype=F64))
    o, _ = check(obj, h, None if obj == "blackbox" and per_adapter else h0, W, b, y, c, K, mask=mask, chunk=chunk)
    if mask is not None:
        assert float(o[-1].detach()) == 0.0


def test_objective_no_bias_sum_reduction_and_dominant_logits():
    K, m, T, d, V = 2, 3, 5, 4, 7
    h, h0, W, b, y, c = make(K, m, T, d, V, seed=11)
    W = W.clone()
    W[3] *= 3e3  # class 3 logits ~ 1e3..1e4
    for obj in ("if", "efim", "margin"):
        hh = h.clone().requires_grad_(True)
        o, l = daunce_objective(
            hh, h0, W, y, c, objective=obj, num_adapters=K, reduction="sum", backend="torch", chunk_size=(4, 3)
        )
        ro, rl = ref.daunce_objective(h, h0, W, y, c, objective=obj, num_adapters=K, reduction="sum")
        assert torch.isfinite(o).all()
        assert_close_to_reference(o, ro, "float64", rtol=1e-9, name=obj)
        assert_close_to_reference(l, rl, "float64", name=obj)


def test_blackbox_without_hidden0_and_broadcast_labels():
    K, m, T, d, V = 3, 4, 2, 5, 6
    h, h0, W, b, y, c = make(K, m, T, d, V, seed=5)
    o1, l1 = daunce_objective(h, None, W, y, None, objective="blackbox", num_adapters=K, bias=b, backend="torch")
    yk = y.unsqueeze(0).expand(K, *y.shape).reshape(K * m, T)
    o2, l2 = daunce_objective(
        h, None, W, yk, None, objective="blackbox", num_adapters=K, bias=b, backend="torch", gamma=2.0
    )
    ro, rl = ref.daunce_objective(h, None, W, yk, c, objective="blackbox", num_adapters=K, bias=b)
    assert_close_to_reference(o1, ro, "float64")
    assert_close_to_reference(o2, 2 * ro, "float64")
    assert_close_to_reference(l1, rl, "float64")
    with pytest.raises(ValueError, match="needs hidden0"):
        daunce_objective(h, None, W, y, c, objective="if", num_adapters=K, backend="torch")


@pytest.mark.parametrize("obj", ["if", "efim", "margin"])
def test_base_stats_reuse_and_loss0(obj):
    K, m, T, d, V = 2, 4, 3, 5, 9
    h, h0, W, b, y, c = make(K, m, T, d, V, seed=7)
    st = base_stats(h0, W, y, objective=obj, bias=b, backend="torch", chunk_size=(2, 4))
    assert st.u.shape == (m * T, d) and st.loss0.shape == (m,)
    assert_close_to_reference(st.loss0, ref.per_example_loss(h0, W, y, bias=b), "float64", name="loss0")
    assert_close_to_reference(st.margin0, ref.margin(h0, W, y, bias=b), "float64", name="margin0")
    REF_H0[0] = h0
    check(obj, h, st, W, b, y, c, K)
    if obj != "margin":
        # loss0 given: R uses it in place of l(theta0)
        l0 = st.loss0 + 0.25
        o, _ = daunce_objective(h, h0, W, y, c, objective=obj, num_adapters=K, bias=b, loss0=l0, backend="torch")
        o_ref, _ = daunce_objective(h, h0, W, y, c, objective=obj, num_adapters=K, bias=b, backend="torch")
        assert not torch.allclose(o, o_ref)
        if obj == "if":
            assert_close_to_reference(o, o_ref - 0.7 / 0.7 * 0.25, "float64")


def test_errors():
    K, m, T, d, V = 2, 3, 2, 4, 5
    h, h0, W, b, y, c = make(K, m, T, d, V)
    with pytest.raises(ValueError, match="K=4 dividing"):
        daunce_objective(h, h0, W, y, c, num_adapters=4, backend="torch")
    with pytest.raises(ValueError, match="weights_c"):
        daunce_objective(h, h0, W, y, c[:, :2], num_adapters=K, backend="torch")
    with pytest.raises(ValueError, match="mask"):
        daunce_objective(h, h0, W, y, c, num_adapters=K, mask=torch.ones(K, m + 1), backend="torch")
    with pytest.raises(ValueError, match="objective"):
        daunce_objective(h, h0, W, y, c, objective="foo", num_adapters=K, backend="torch")
    with pytest.raises(NotImplementedError, match="frozen"):
        daunce_objective(h, h0, W.clone().requires_grad_(True), y, c, num_adapters=K, backend="torch")
    st = base_stats(h0, W, y, objective="margin", backend="torch")
    with pytest.raises(ValueError, match="built for objective"):
        daunce_objective(h, st, W, y, c, objective="if", num_adapters=K, backend="torch")


def test_float32_inputs():
    K, m, T, d, V = 3, 4, 5, 16, 40
    h, h0, W, b, y, c = make(K, m, T, d, V, seed=13)
    for obj in OBJS:
        o, l = daunce_objective(
            h.float(),
            h0.float(),
            W.float(),
            y,
            c.float(),
            objective=obj,
            num_adapters=K,
            bias=b.float(),
            backend="torch",
            chunk_size=(7, 16),
        )
        ro, rl = ref.daunce_objective(
            h.float().double(),
            h0.float().double(),
            W.float().double(),
            y,
            c.float().double(),
            objective=obj,
            num_adapters=K,
            bias=b.float().double(),
        )
        assert o.dtype == torch.float32
        assert_close_to_reference(o, ro, "float32", scale=10, name=obj)
        assert_close_to_reference(l, rl, "float32", scale=10, name=obj)


@pytest.mark.parametrize("per_adapter", [False, True])
def test_first_order_dot_in_small_chunks(monkeypatch, per_adapter):
    from daunce_fast.losses.objectives import RowDot

    monkeypatch.setattr(RowDot, "CHUNK", 7)  # several row chunks even on tiny shapes
    K, m, T, d, V = 3, 4, 5, 6, 9
    h, h0, W, b, y, c = make(K, m, T, d, V, per_adapter=per_adapter, seed=17)
    for obj in ("if", "margin"):
        check(obj, h, h0, W, b, y, c, K)


def test_bfloat16_hidden_gets_bfloat16_grad():
    K, m, T, d, V = 2, 3, 4, 8, 12
    h, h0, W, b, y, c = make(K, m, T, d, V, seed=19)
    hb = h.bfloat16().requires_grad_(True)
    o, l = daunce_objective(
        hb,
        h0.bfloat16(),
        W.bfloat16(),
        y,
        c,
        objective="efim",
        num_adapters=K,
        bias=b.bfloat16(),
        backend="torch",
        chunk_size=(5, 4),
    )
    hr = hb.detach().double().requires_grad_(True)
    ro, rl = ref.daunce_objective(
        hr,
        h0.bfloat16().double(),
        W.bfloat16().double(),
        y,
        c,
        objective="efim",
        num_adapters=K,
        bias=b.bfloat16().double(),
    )
    assert o.dtype == torch.float32
    assert_close_to_reference(o, ro, "float32", scale=10, name="efim bf16 inputs")
    o.sum().backward()
    ro.sum().backward()
    assert hb.grad.dtype == torch.bfloat16
    assert_close_to_reference(hb.grad, hr.grad, "bfloat16", name="efim bf16 dh")
