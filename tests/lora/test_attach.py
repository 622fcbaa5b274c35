"""attach/detach on an MLP, HF GPT-2 (Conv1D) and Llama; PEFT export/import parity; state dicts."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast import lora
from daunce_fast.testing import assert_close_to_reference

from ._models import GPT2_TARGETS, LLAMA_TARGETS, gpt2, llama, mlp


def _randomise_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_attach_mlp_starts_at_base_and_detach_restores():
    model = mlp()
    model[2].weight.requires_grad_(False)  # a flag attach must restore as it was
    ref = copy.deepcopy(model)
    x = torch.randn(3 * 4, 8)
    params = lora.attach(model, 3, 2, 4.0, ["0", "2"], seed=0)
    assert [type(model[i]).__name__ for i in (0, 2, 4)] == ["MultiLoRALinear", "MultiLoRALinear", "Linear"]
    assert len(params) == 4 and all(p.requires_grad for p in params)
    assert params[0].shape == (3, 2, 8) and params[1].shape == (3, 16, 2)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # PEFT's init: kaiming-uniform(a=sqrt(5)) gives U(-1/sqrt(d_in), 1/sqrt(d_in)); B = 0.
    assert params[0].abs().max() <= 8**-0.5 and params[0].std() > 0.1 and params[1].abs().sum() == 0
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="already attached"):
        lora.attach(model, 3, 2, 4.0, ["0"])
    lora.detach(model)
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in ref.parameters()]
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_attach_target_matching_and_errors():
    assert lora.matches_target("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert not lora.matches_target("model.layers.0.self_attn.xq_proj", ["q_proj"])
    assert lora.matches_target("model.layers.1.mlp.up_proj", r".*\.1\.mlp\.(up|down)_proj")
    assert not lora.matches_target("model.layers.1.mlp.up_proj", r"up_proj")  # regex: full match, as PEFT
    model = llama()
    params = lora.attach(model, 2, 4, 8.0, r".*layers\.1\.mlp\.(up|down)_proj")
    assert [n for n, _ in lora.lora_modules(model)] == ["model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert len(params) == 4
    with pytest.raises(ValueError, match="matches no"):
        lora.attach(mlp(), 2, 4, 8.0, ["nope"])
    three = mlp()
    lora.attach(three, 3, 2, 4.0, ["0"])
    with pytest.raises(ValueError, match="adapter-major"):
        three(torch.randn(4, 8))  # 4 rows are not 3 equal segments


def _peft_outputs(base, directory, inputs):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(copy.deepcopy(base), directory).eval()
    with torch.no_grad():
        return pm(**inputs).logits if isinstance(inputs, dict) else pm(inputs)


@pytest.mark.parametrize("arch", ["mlp", "gpt2", "llama"])
def test_save_peft_matches_peft_from_pretrained(arch, tmp_path):
    pytest.importorskip("peft")
    K, m = 3, 2
    if arch == "mlp":
        model, targets = mlp(), ["0", "2", "4"]
        x = torch.randn(K * m, 8)
        call = lambda mod, rows: mod(x[rows])  # noqa: E731
        peft_in = lambda rows: x[rows]  # noqa: E731
    else:
        model, targets = (gpt2(), GPT2_TARGETS) if arch == "gpt2" else (llama(), LLAMA_TARGETS)
        ids = torch.randint(0, 64, (K * m, 7), generator=torch.Generator().manual_seed(0))
        call = lambda mod, rows: mod(input_ids=ids[rows]).logits  # noqa: E731
        peft_in = lambda rows: {"input_ids": ids[rows]}  # noqa: E731
    base = copy.deepcopy(model)
    lora.attach(model, K, 4, 8.0, targets, seed=3)
    if arch == "gpt2":
        assert all(m_.fan_in_fan_out for _, m_ in lora.lora_modules(model))
    _randomise_B(model)
    with torch.no_grad():
        with lora.adapters_disabled(model):  # plain base on [m, ...] inputs
            torch.testing.assert_close(call(model, slice(0, m)), call(base, slice(0, m)), rtol=0, atol=0)
        out = call(model, slice(None))
        assert (out[:m] - call(base, slice(0, m))).abs().max() > 1e-3  # adapters change the output
    for k in range(K):
        d = tmp_path / f"a{k}"
        lora.save_peft(model, k, str(d))
        rows = slice(k * m, (k + 1) * m)
        assert_close_to_reference(
            _peft_outputs(base, str(d), peft_in(rows)),
            out[rows].double(),
            "float32",
            scale=10,
            name=f"{arch} adapter {k} vs PEFT",
        )
    # load_peft round trip into another slot of a fresh attachment.
    other = copy.deepcopy(base)
    lora.attach(other, K, 4, 8.0, targets)
    lora.load_peft(other, 0, str(tmp_path / "a2"))
    for (n, a), (_, b) in zip(lora.lora_modules(model), lora.lora_modules(other)):
        assert torch.equal(a.lora_A[2], b.lora_A[0]) and torch.equal(a.lora_B[2], b.lora_B[0]), n
    lora.detach(model)
    with torch.no_grad():
        torch.testing.assert_close(call(model, slice(0, m)), call(base, slice(0, m)), rtol=0, atol=0)


def test_load_peft_adapter_trained_by_peft(tmp_path):
    peft = pytest.importorskip("peft")
    base = llama()
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=16, target_modules=LLAMA_TARGETS))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    pm.save_pretrained(str(tmp_path))
    model = copy.deepcopy(base)
    lora.attach(model, 2, 4, 16.0, LLAMA_TARGETS)
    lora.load_peft(model, 1, str(tmp_path))
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids.repeat(2, 1)).logits[1]
        theirs = pm(input_ids=ids).logits[0]
    assert_close_to_reference(ours, theirs.double(), "float32", scale=10, name="PEFT-trained adapter")
    with pytest.raises(ValueError, match="do not match"):
        other = copy.deepcopy(base)
        lora.attach(other, 2, 8, 16.0, LLAMA_TARGETS)
        lora.load_peft(other, 0, str(tmp_path))


def test_adapter_state_round_trip_and_full_rank_refuses_peft(tmp_path):
    model = mlp()
    lora.attach(model, 2, 3, 3.0, ["0", "4"], seed=1)
    _randomise_B(model)
    state = lora.adapter_state(model)
    assert set(state) == {"0.lora_A", "0.lora_B", "4.lora_A", "4.lora_B"} and state["0.lora_A"].shape == (2, 3, 8)
    lora.reset_adapters(model, [5, 6], seed=9)
    assert not torch.equal(model[0].lora_A, state["0.lora_A"]) and model[0].lora_B.abs().sum() == 0
    lora.load_adapter_state(model, state)
    assert all(torch.equal(p, state[k]) for k, p in lora.adapter_state(model).items())
    with pytest.raises(KeyError):
        lora.load_adapter_state(model, {"0.lora_A": state["0.lora_A"]})
    full = mlp()
    lora.attach(full, 2, "full", 1.0, ["0"])
    with pytest.raises(NotImplementedError):
        lora.save_peft(full, 0, str(tmp_path))


def test_layer_sequence_inputs_dropout_and_full_rank():
    base = nn.Linear(6, 5)
    K, m, T = 2, 3, 4
    x = torch.randn(K * m, T, 6)
    lay = lora.MultiLoRALinear(base, K, 3, 6.0, dropout=0.5, seed=0)
    with torch.no_grad():
        lay.lora_B.normal_()
    lay.eval()  # no dropout: [K*m, T, d] rows of adapter k are rows [k*m*T, (k+1)*m*T) of the flat view
    y = lay(x)
    assert y.shape == (K * m, T, 5)
    for k in range(K):
        xs = x[k * m : (k + 1) * m]
        want = base(xs) + 2.0 * (xs @ lay.lora_A[k].T) @ lay.lora_B[k].T
        torch.testing.assert_close(y[k * m : (k + 1) * m], want, rtol=1e-5, atol=1e-5)
    lay.train()
    torch.manual_seed(0)
    y_drop = lay(x.requires_grad_())
    assert not torch.allclose(y_drop, y)
    y_drop.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(lay.lora_A.grad).all()
    # Full rank: dense per-adapter deltas of weight and bias.
    full = lora.MultiLoRALinear(base, K, "full", 1.0)
    with torch.no_grad():
        full.delta_weight.normal_()
        full.delta_bias.normal_()
    yf = full(x.detach())
    for k in range(K):
        xs = x.detach()[k * m : (k + 1) * m]
        want = xs @ (base.weight + full.delta_weight[k]).T + base.bias + full.delta_bias[k]
        torch.testing.assert_close(yf[k * m : (k + 1) * m], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        lora.MultiLoRALinear(base, K, 0, 1.0)
    with pytest.raises(TypeError):
        lora.MultiLoRALinear(nn.Conv2d(1, 1, 1), K, 2, 1.0)
