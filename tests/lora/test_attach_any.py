"""attach over any model: every registered kind, containers, attention wrapped whole, the model
itself as the target, clear errors, attribute reads, checkpoints of every kind, summary."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast import lora
from daunce_fast.lora.fallback import FallbackCopies

from ._copies import adapters64, check_against_copies, randomise, reference_model

K, M = 3, 2


class Net(nn.Module):
    """Embedding + conv + BatchNorm + an encoder layer (attention, norms) + a custom layer + head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.block = nn.TransformerEncoderLayer(6, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
        self.scale = Scale(6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        h = self.emb(ids)  # [N, T, 6]
        h = self.bn(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.head(self.scale(self.block(h)).mean(1))


class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))

    def forward(self, x):
        return x * self.g


def _net():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2)
    return net


ALL = ["emb", "conv", "bn", "block", "scale", "head"]


@pytest.mark.parametrize("rank", [2, "full"])
def test_every_kind_equals_k_copies(rank):
    net = _net().train()
    orig = copy.deepcopy(net)
    lora.attach(net, K, rank, 4.0, ALL, seed=0)
    kinds = {r["name"]: (r["type"], r["kind"]) for r in lora.summary(net)}
    r = "full" if rank == "full" else f"lora r={rank}"
    assert kinds == {
        "emb": ("Embedding", r),
        "conv": ("Conv1d", r),
        "bn": ("BatchNorm1d", "affine (batchnorm=eval)"),
        "block.self_attn": ("MultiheadAttention", "fallback"),  # a container stands for its layers
        "block.linear1": ("Linear", r),
        "block.linear2": ("Linear", r),
        "block.norm1": ("LayerNorm", "affine"),
        "block.norm2": ("LayerNorm", "affine"),
        "scale": ("Scale", "fallback"),
        "head": ("Linear", r),
    }
    ids = torch.randint(0, 10, (K * M, 5))
    before = {n: b.clone() for n, b in orig.named_buffers()}
    check_against_copies(orig, net, [ids], K, tol=5e-5)
    # copy independence: copy 0's inputs change, the others' outputs stay
    with torch.no_grad():
        y = net(ids)
        ids2 = ids.clone()
        ids2[:M] = (ids2[:M] + 1) % 10
        y2 = net(ids2)
    assert torch.equal(y[M:], y2[M:]) and not torch.equal(y[:M], y2[:M])
    for n, b in lora.detach(net).named_buffers():
        assert torch.equal(b, before[n]), n


def test_zero_adapters_are_theta0_in_train_mode():
    net = _net()
    theta0 = copy.deepcopy(net).eval()
    lora.attach(net, K, 2, 4.0, ALL, seed=0)
    net.train()
    ids = torch.randint(0, 10, (K * M, 5))
    torch.testing.assert_close(net(ids), theta0(ids), rtol=1e-6, atol=1e-6)


def test_eval_no_grad_fast_path_stands_down():
    # eval + no_grad + batch_first is where torch's fused encoder layer would read linear1.weight
    # (θ0's, through the attribute fall-through) instead of calling the copy layers
    torch.manual_seed(4)
    enc = nn.TransformerEncoderLayer(6, 2, dim_feedforward=8, dropout=0.0, batch_first=True).eval()
    orig = copy.deepcopy(enc)
    lora.attach(enc, K, 2, 4.0, ["linear1", "linear2"])
    randomise(enc)
    x = torch.randn(K * M, 4, 6)
    with torch.no_grad():
        y = enc(x)
    ad = adapters64(enc)
    want = torch.cat([reference_model(orig, enc, ad, k)(xk) for k, xk in enumerate(x.chunk(K))])
    torch.testing.assert_close(y.double(), want.detach(), rtol=5e-5, atol=5e-5)


def test_attention_out_proj_target_wraps_the_attention():
    enc = nn.TransformerEncoderLayer(6, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
    lora.attach(enc, K, 2, 4.0, ["out_proj", "linear1"])
    assert isinstance(enc.self_attn, FallbackCopies) and enc.self_attn.name == "self_attn"
    assert isinstance(enc.self_attn.out_proj, nn.Linear)  # read directly by torch's attention: θ0's
    assert isinstance(enc.linear1, lora.MultiLoRALinear)


def test_sequence_first_transformer_is_wrapped_whole():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.TransformerEncoderLayer(6, 2, dim_feedforward=8, dropout=0.0))
    orig = copy.deepcopy(model)
    # (the Linear in front sees [L, N, 5] too: only layers that split dimension 1 may be copies here)
    lora.attach(model, K, 2, 4.0, ["linear1", "norm2"])
    assert [(r["name"], r["kind"]) for r in lora.summary(model)] == [("1", "fallback")]
    assert model[1].batch_dim == 1
    # L = 3 = K: a split of dimension 0 would run without error and mix positions into copies
    check_against_copies(orig, model, [torch.randn(3, K * M, 5)], K, in_dims=[1], out_dims=[1], tol=5e-5)


def test_bare_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="attach_copies"):
        lora.attach(lin, K, 2, 2.0, [""])
    model, params = lora.attach_copies(copy.deepcopy(lin), K, 2, 2.0, [""], seed=0)
    assert isinstance(model, lora.MultiLoRALinear) and len(params) == 2
    x = torch.randn(K * M, 4)
    assert torch.equal(model(x), lin(x))
    assert model.weight.shape == (3, 4) and model.bias.shape == (3,) and model.in_features == 4
    check_against_copies(lin, model, [x], K)
    back = lora.detach(model)
    assert type(back) is nn.Linear and back.weight.requires_grad


def test_errors_name_the_module():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.MultiheadAttention(4, 2))
    with pytest.raises(ValueError, match=r"'1' \(ReLU\), which has no parameters"):
        lora.attach(copy.deepcopy(net), K, 2, 2.0, ["0", "1"])
    with pytest.raises(ValueError, match=r"'2' \(MultiheadAttention\) has no batched copy class and fallback=False"):
        lora.attach(copy.deepcopy(net), K, 2, 2.0, ["2"], fallback=False)
    with pytest.raises(ValueError, match="matches no module"):
        lora.attach(copy.deepcopy(net), K, 2, 2.0, ["nope"])
    with pytest.raises(ValueError, match=r"matches .<root>. \(Sequential\), which has no parameters"):
        lora.attach(nn.Sequential(nn.ReLU()), K, 2, 2.0, ".*")


def test_attribute_reads_of_wrapped_layers():
    net = _net()
    lora.attach(net, K, 2, 4.0, ALL)
    assert net.head.weight.shape == (3, 6) and net.head.in_features == 6 and net.head.bias is not None
    assert net.conv.weight.shape == (6, 6, 3) and net.emb.embedding_dim == 6
    assert net.bn.running_mean.shape == (6,) and net.block.norm1.normalized_shape == (6,)
    assert net.block.self_attn.out_proj.weight.shape == (6, 6) and net.scale.g.shape == (6,)


def test_adapter_state_round_trip_every_kind(tmp_path):
    net = _net()
    lora.attach(net, K, 2, 4.0, ALL, seed=0)
    randomise(net)
    state = lora.adapter_state(net)
    assert {"bn.delta_weight", "block.self_attn.delta.in_proj_weight", "scale.delta.g", "emb.lora_A"} <= set(state)
    other = _net()
    lora.attach(other, K, 2, 4.0, ALL, seed=1)
    lora.load_adapter_state(other, state)
    ids = torch.randint(0, 10, (K * M, 5))
    net.eval()
    other.eval()
    assert torch.equal(net(ids), other(ids))
    lora.reset_adapters(other, range(K), 0)
    assert all(p.abs().sum() == 0 for n, m in lora.copy_layers(other) if n != "emb" for p in m.state_items()[-1][1:])
    with pytest.raises(NotImplementedError, match="PEFT"):
        lora.save_peft(net, 0, str(tmp_path))
