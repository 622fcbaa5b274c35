"""MultiCopyEmbedding: PEFT's embedding LoRA and full-rank copies equal K separate float64 embeddings."""

import copy

import pytest
import torch
from torch import nn

from daunce_fast import lora
from daunce_fast.lora.embedding import MultiCopyEmbedding

from ._copies import check_against_copies, randomise

K, M, T, V, D = 3, 2, 5, 11, 6


@pytest.mark.parametrize("rank", [3, "full"])
@pytest.mark.parametrize("padding_idx", [None, 4])
def test_embedding_equals_k_copies(rank, padding_idx):
    torch.manual_seed(0)
    base = nn.Embedding(V, D, padding_idx=padding_idx)
    orig = copy.deepcopy(base)
    layer = MultiCopyEmbedding(base, K, rank, alpha=5.0, seed=1)
    ids = torch.randint(0, V, (K * M, T))
    ids[0, 0] = ids[-1, 1] = 4
    if rank != "full" and padding_idx is not None:
        # PEFT's formula (the padding column of A gets no gradient, B does through it):
        # written out here rather than as an effective table.
        randomise(layer)
        A = layer.lora_A.detach().double().requires_grad_(True)
        B = layer.lora_B.detach().double().requires_grad_(True)
        y = layer(ids)
        g = torch.randn(y.shape, dtype=torch.float64)
        (y.double() * g).sum().backward()
        ref = []
        for k, idk in enumerate(ids.chunk(K)):
            after_a = torch.nn.functional.embedding(idk, A[k].t(), padding_idx=padding_idx)
            ref.append(orig.weight.double()[idk] + layer.scaling * after_a @ B[k].t())
        ref = torch.cat(ref)
        torch.testing.assert_close(y.double(), ref, rtol=2e-5, atol=2e-5)
        gA, gB = torch.autograd.grad((ref * g).sum(), [A, B])
        torch.testing.assert_close(layer.lora_A.grad.double(), gA, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(layer.lora_B.grad.double(), gB, rtol=2e-5, atol=2e-5)
        assert layer.lora_A.grad[:, :, 4].abs().sum() == 0
    else:
        check_against_copies(orig, layer, [ids], K)
    if rank == "full" and padding_idx is not None:
        assert layer.delta_weight.grad[:, 4].abs().sum() == 0  # the padding row never learns


def test_init_follows_peft_and_zero_adapters_are_theta0():
    base = nn.Embedding(V, D)
    layer = MultiCopyEmbedding(base, K, 4, alpha=8.0, seed=3, adapter_ids=[5, 6, 7], name="emb")
    assert layer.lora_A.shape == (K, 4, V) and layer.lora_B.shape == (K, D, 4) and layer.scaling == 2.0
    assert layer.lora_A.abs().sum() == 0 and layer.lora_B.abs().sum() > 0  # A zeros, B normal (PEFT)
    ids = torch.randint(0, V, (K * 2, 3))
    assert torch.equal(layer(ids), base(ids))
    other = MultiCopyEmbedding(nn.Embedding(V, D), 2, 4, alpha=8.0, seed=3, adapter_ids=[6, 9], name="emb")
    assert torch.equal(other.lora_B[0], layer.lora_B[1])  # (seed, id, name) alone fixes a copy
    assert layer.weight is base.weight and layer.num_embeddings == V  # attributes fall through


def test_errors():
    with pytest.raises(ValueError, match="max_norm"):
        MultiCopyEmbedding(nn.Embedding(V, D, max_norm=1.0), K, 2)
    layer = MultiCopyEmbedding(nn.Embedding(V, D), K, 2)
    with pytest.raises(ValueError, match="K=3"):
        layer(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="rank"):
        MultiCopyEmbedding(nn.Embedding(V, D), K, 0)
    with lora.adapters_disabled(layer):
        assert layer(torch.zeros(4, 2, dtype=torch.long)).shape == (4, 2, D)
