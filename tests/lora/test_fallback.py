"""FallbackCopies (torch.func): any module with parameters, K full-rank copies, equal to K separate
float64 modules; nn.MultiheadAttention in both layouts, tuple / None outputs, masks; the loop when
vmap cannot run the module."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast.lora.fallback import FallbackCopies

from ._copies import check_against_copies

K, M, L, S, E = 3, 2, 4, 5, 6


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_equals_k_copies(batch_first, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 2, batch_first=batch_first, kdim=5, vdim=3)
    orig = copy.deepcopy(mha)
    layer = FallbackCopies(mha, K, name="inner")  # its name inside Call below
    d = 0 if batch_first else 1
    q = torch.randn((K * M, L, E) if batch_first else (L, K * M, E))
    k = torch.randn((K * M, S, 5) if batch_first else (S, K * M, 5))
    v = torch.randn((K * M, S, 3) if batch_first else (S, K * M, 3))
    pad = torch.zeros(K * M, S, dtype=torch.bool)
    pad[1, -2:] = True

    class Call(nn.Module):  # positional masks and flags through one wrapper signature
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, q, k, v, pad):
            return self.inner(q, k, v, key_padding_mask=pad, need_weights=need_weights)

    out = check_against_copies(
        Call(orig), Call(layer), [q, k, v, pad], K, in_dims=[d, d, d, 0], out_dims=[d, 0] if need_weights else [d]
    )
    assert len(out) == (2 if need_weights else 1)
    assert layer(q, k, v, need_weights=need_weights)[1] is None or need_weights
    assert layer.kind_label() == "fallback" and layer.describe()["params_per_copy"] == sum(
        p.numel() for p in mha.parameters()
    )


def test_transformer_encoder_layer_as_a_whole():
    torch.manual_seed(1)
    enc = nn.TransformerEncoderLayer(E, 2, dim_feedforward=7, dropout=0.0, batch_first=True)
    orig = copy.deepcopy(enc)
    layer = FallbackCopies(enc, K)
    x = torch.randn(K * M, L, E)
    mask = torch.triu(torch.full((L, L), float("-inf")), 1)  # 2-D: shared by every copy
    check_against_copies(orig, layer, [x, mask], K, in_dims=[0, None])
    assert layer.batch_dim == 0 and not layer.use_loop


class Branchy(nn.Module):
    """Data-dependent control flow (vmap cannot run it) and a BatchNorm updating its buffers."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = x @ self.w
        if y.sum() > 0:
            y = y * 2
        return self.bn(y)


def test_loop_when_vmap_cannot_and_buffers_stay():
    torch.manual_seed(2)
    mod = Branchy().train()
    orig = copy.deepcopy(mod)
    layer = FallbackCopies(mod, K)
    x = torch.randn(K * 5, 4)
    before = {n: b.clone() for n, b in mod.named_buffers()}
    check_against_copies(orig, layer, [x], K, batchnorm="batch")  # train-mode BN per copy, as the loop runs it
    assert layer.use_loop and layer.kind_label() == "fallback loop" and layer.vmap_error
    for n, b in mod.named_buffers():
        assert torch.equal(b, before[n]), n


def test_zero_deltas_and_errors():
    mha = nn.MultiheadAttention(E, 2)
    x = torch.randn(L, K * M, E)
    want = mha(x, x, x)[0]
    layer = FallbackCopies(mha, K)
    torch.testing.assert_close(layer(x, x, x)[0], want, rtol=1e-6, atol=1e-6)
    assert layer.in_proj_weight is mha.in_proj_weight  # attribute reads fall through
    with pytest.raises(ValueError, match="K=3"):
        layer(x[:, :4], x[:, :4], x[:, :4])
    with pytest.raises(ValueError, match="no parameters"):
        FallbackCopies(nn.ReLU(), K)
