"""Training K adapters together == training K PEFT models one by one; isolation; chunking; full rank."""

import copy

import pytest
import torch

from daunce_fast import lora

from ._models import mlp

K, M, STEPS = 3, 4, 20


def _data(K, m, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(K * m, 8, generator=g), torch.randn(K * m, 4, generator=g)) for _ in range(steps)]


def _train_batched(model, params, data, K, lr=1e-2, clip=None, wd=0.01):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    for x, y in data:
        loss = lora.per_adapter_loss(((model(x) - y) ** 2).mean(-1), K)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            lora.clip_grad_norm_per_adapter(params, clip)
        opt.step()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("clip", [None, 0.05])
def test_batched_training_matches_peft_models_trained_one_by_one(clip):
    peft = pytest.importorskip("peft")
    base = mlp()
    data = _data(K, M, STEPS)
    model = copy.deepcopy(base)
    params = lora.attach(model, K, 4, 8.0, ["0", "2", "4"], seed=7)
    init = lora.adapter_state(model)
    _train_batched(model, params, data, K, clip=clip)
    for k in range(K):
        pm = peft.get_peft_model(
            copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2", "4"])
        )
        named = dict(pm.named_parameters())
        with torch.no_grad():
            for name in ("0", "2", "4"):
                named[f"base_model.model.{name}.lora_A.default.weight"].copy_(init[f"{name}.lora_A"][k])
                named[f"base_model.model.{name}.lora_B.default.weight"].copy_(init[f"{name}.lora_B"][k])
        ps = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01)
        rows = slice(k * M, (k + 1) * M)
        for x, y in data:
            loss = ((pm(x[rows]) - y[rows]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(ps, clip)
            opt.step()
        for name in ("0", "2", "4"):
            for part in ("A", "B"):
                ours = getattr(model[int(name)], f"lora_{part}")[k].detach()
                theirs = named[f"base_model.model.{name}.lora_{part}.default.weight"].detach()
                err = _rel(ours, theirs)
                print(f"adapter {k} layer {name} lora_{part}: rel err {err:.2e}")
                assert err < 1e-5
                assert not torch.equal(ours, init[f"{name}.lora_{part}"][k])  # it did train


def test_changing_one_adapters_data_leaves_the_others_bit_identical():
    data = _data(K, M, 8)
    altered = [(x.clone(), y.clone()) for x, y in data]
    j = 1
    for x, y in altered:
        x[j * M : (j + 1) * M] = torch.randn(M, 8) * 3
        y[j * M : (j + 1) * M] = 5.0
    results = []
    for d in (data, altered):
        model = mlp()
        params = lora.attach(model, K, 4, 8.0, ["0", "2", "4"], seed=7)
        _train_batched(model, params, d, K, clip=0.1)
        results.append(lora.adapter_state(model))
    for name, t in results[0].items():
        for k in range(K):
            same = torch.equal(t[k], results[1][name][k])
            assert same == (k != j), (name, k)


@pytest.mark.parametrize("rank", [4, "full"])
def test_chunked_training_equals_training_all_adapters_at_once(rank):
    K_all, K_c, seed = 4, 2, 11
    data = _data(K_all, M, 6, seed=3)
    model = mlp()
    params = lora.attach(model, K_all, rank, 8.0, ["0", "2", "4"], seed=seed)
    init = lora.adapter_state(model)
    _train_batched(model, params, data, K_all)
    everything = lora.adapter_state(model)
    with torch.no_grad():
        x_eval = torch.randn(K_all * M, 8)
        out_all = model(x_eval)

    chunked = mlp()
    params = lora.attach(chunked, K_c, rank, 8.0, ["0", "2", "4"], seed=seed, adapter_ids=range(0, K_c))
    for k0 in range(0, K_all, K_c):
        ids = range(k0, k0 + K_c)
        if k0:
            lora.reset_adapters(chunked, ids, seed)
        rows = slice(k0 * M, (k0 + K_c) * M)
        for name, t in lora.adapter_state(chunked).items():  # same init, bit for bit
            assert torch.equal(t, init[name][k0 : k0 + K_c]), name
        _train_batched(chunked, params, [(x[rows], y[rows]) for x, y in data], K_c)  # fresh optimiser per chunk
        state = lora.adapter_state(chunked)
        for name, t in state.items():
            err = (t - everything[name][k0 : k0 + K_c]).abs().max().item()
            print(f"chunk {k0} {name}: max abs diff {err:.1e}")
            # Bit for bit on this CPU: every row's products are computed independently of how many
            # other rows share the GEMM. (A BLAS that splits the inner dimension differently for
            # another row count would show ~1e-7 here; the math is the same.)
            assert err == 0.0, (name, k0, err)
        with torch.no_grad():
            assert torch.equal(chunked(x_eval[rows]), out_all[rows])


def test_seeded_init_depends_only_on_seed_id_and_layer():
    a, b = mlp(), mlp()
    lora.attach(a, 4, 3, 3.0, ["0", "2"], seed=5)
    lora.attach(b, 2, 3, 3.0, ["0", "2"], seed=5, adapter_ids=[3, 1])
    assert torch.equal(b[0].lora_A[0], a[0].lora_A[3]) and torch.equal(b[0].lora_A[1], a[0].lora_A[1])
    assert not torch.equal(a[0].lora_A[0], a[0].lora_A[1])  # ids differ
    assert not torch.equal(a[0].lora_A[0, :, :8], a[2].lora_A[0, :, :8])  # layers differ
    c = mlp()
    lora.attach(c, 4, 3, 3.0, ["0", "2"], seed=6)
    assert not torch.equal(a[0].lora_A, c[0].lora_A)  # seeds differ


def test_full_rank_matches_dense_fine_tunes():
    # Every Linear of the MLP is targeted, so adapter k is a full fine-tune of the model. Without
    # weight decay (which would decay W0 in a dense run but only the delta here) Adam's updates of
    # W0 + delta equal those of W: the deltas must equal the dense weight changes.
    base = mlp()
    data = _data(K, M, 10)
    model = copy.deepcopy(base)
    params = lora.attach(model, K, "full", 1.0, ["0", "2", "4"])
    assert [tuple(p.shape) for p in params[:2]] == [(K, 16, 8), (K, 16)]
    _train_batched(model, params, data, K, wd=0.0)
    for k in range(K):
        ref = copy.deepcopy(base)
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
        rows = slice(k * M, (k + 1) * M)
        for x, y in data:
            loss = ((ref(x[rows]) - y[rows]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for li in (0, 2, 4):
            m = model[li]
            for delta, new, old in (
                (m.delta_weight[k], ref[li].weight, base[li].weight),
                (m.delta_bias[k], ref[li].bias, base[li].bias),
            ):
                err = (delta.detach() - (new - old).detach()).abs().max().item()
                print(f"full rank adapter {k} layer {li}: max abs err {err:.2e}")
                assert err < 1e-5 * old.abs().max().item()


def test_per_adapter_clipping_equals_torch_clip_on_each_adapter():
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(4, 3, 5, requires_grad=True), torch.zeros(4, 7, 3, requires_grad=True)]
    for p, s in zip(params, (1.0, 30.0)):
        p.grad = torch.randn(p.shape, generator=g) * s
    p_no_grad = torch.zeros(4, 2, requires_grad=True)  # no .grad: counts as zero
    for p in params:
        p.grad[2] *= 1e-3  # adapter 2 is under the threshold: untouched
    expect = []
    for k in range(4):
        alone = [p.grad[k].clone().requires_grad_() for p in params]
        for a in alone:
            a.grad = a.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        expect.append((norm, [a.grad for a in alone]))
    norms = lora.clip_grad_norm_per_adapter(params + [p_no_grad], 1.0)
    for k, (norm, grads) in enumerate(expect):
        torch.testing.assert_close(norms[k], norm, rtol=1e-6, atol=0)
        for p, gr in zip(params, grads):
            torch.testing.assert_close(p.grad[k], gr, rtol=1e-6, atol=1e-7)
    assert norms[2] < 1.0 and norms[0] > 1.0
    # A non-finite gradient in one adapter leaves the others' clipping alone.
    params[0].grad[1, 0, 0] = float("inf")
    before = params[0].grad[3].clone()
    n2 = lora.clip_grad_norm_per_adapter(params, 1e9)
    assert torch.isinf(n2[1]) and torch.isfinite(n2[[0, 2, 3]]).all() and torch.equal(params[0].grad[3], before)
    with pytest.raises(RuntimeError, match="adapters \\[1\\]"):
        lora.clip_grad_norm_per_adapter(params, 1.0, error_if_nonfinite=True)


def test_per_adapter_loss_and_lr_scaling():
    model = mlp()
    params = lora.attach(model, K, 4, 8.0, ["0", "2"], seed=1)
    x, y = _data(K, M, 1)[0]
    losses = ((model(x) - y) ** 2).mean(-1)
    per = lora.split_loss(losses, K)
    torch.testing.assert_close(per, losses.view(K, M).mean(1))
    scale = torch.tensor([1.0, 0.0, 3.0])
    lora.per_adapter_loss(losses, K, scale).backward()
    g_scaled = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    lora.per_adapter_loss(((model(x) - y) ** 2).mean(-1), K).backward()
    for gs, g in zip(g_scaled, (p.grad for p in params)):
        torch.testing.assert_close(gs, g * scale.view(-1, 1, 1))
    # lr scaling: adapter k's AdamW update equals one with lr * lr_scale[k].
    lr_scale = [1.0, 0.5, 0.0]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    with lora.scale_lr_per_adapter(params, lr_scale):
        opt.step()
    for k, s in enumerate(lr_scale):
        for p, b in zip(params, before):
            ref = b[k].clone().requires_grad_()
            ref.grad = p.grad[k].clone()
            if s > 0:
                torch.optim.AdamW([ref], lr=1e-2 * s, weight_decay=0.1).step()
            if s in (0.0, 1.0):  # unscaled and frozen adapters: bit for bit
                assert torch.equal(p[k].detach(), ref.detach())
            torch.testing.assert_close(p[k].detach(), ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.triton
def test_training_through_triton_kernels_matches_torch_path():
    data = _data(2, 3, 3)
    states = []
    for backend in ("torch", "triton"):
        model = mlp()
        params = lora.attach(model, 2, 4, 8.0, ["0", "2", "4"], seed=2, backend=backend)
        _train_batched(model, params, data, 2)
        states.append(lora.adapter_state(model))
    for name, t in states[0].items():
        err = _rel(states[1][name], t)
        print(f"{name}: triton vs torch rel err {err:.2e}")
        assert err < 1e-5
