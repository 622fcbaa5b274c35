"""Hugging Face causal LMs through the pipeline's fused loss head (tiny models built from configs)."""

import numpy as np
import pytest
import torch

from daunce_fast.daunce import Daunce

transformers = pytest.importorskip("transformers")

N, T, V = 24, 10, 50


def tiny(kind):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=T,
        )
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=T)
    return transformers.GPT2LMHeadModel(cfg).eval()


class Prompts(torch.utils.data.Dataset):
    """(prompt, response) token rows; loss on the response only, padding at the end."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, V, (N, T), generator=g)
        self.mask = torch.ones(N, T, dtype=torch.long)
        self.mask[::5, -2:] = 0  # some padded rows
        self.labels = self.ids.clone()
        self.labels[:, :4] = -100
        self.labels[self.mask == 0] = -100

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def hf_per_example_loss(model, ds):
    with torch.no_grad():
        logits = model(input_ids=ds.ids, attention_mask=ds.mask).logits[:, :-1]
    y = ds.labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), y.reshape(-1), reduction="none", ignore_index=-100
    ).view(y.shape)
    valid = (y != -100).float()
    return ((tok * valid).sum(1) / valid.sum(1)).numpy()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_recorded_losses_equal_hf_loss_when_adapters_stay_at_init(tmp_path, kind):
    model, ds = tiny(kind), Prompts()
    d = Daunce(model, num_models=3, steps=1, lr=0.0, batch_size=4, rank=4, workdir=tmp_path)
    assert d.head.kind == "lm"
    d.fit(ds)
    rec = np.array(d.losses())
    ref = hf_per_example_loss(model, ds)
    for k in range(3):
        np.testing.assert_allclose(rec[k], ref, rtol=2e-5, atol=2e-5)


def test_lm_training_moves_models_apart_and_chunks_agree(tmp_path):
    model, ds = tiny("llama"), Prompts()
    opts = dict(num_models=4, epochs=1, batch_size=4, lr=5e-3, rank=4, seed=1)
    a = np.array(Daunce(model, workdir=tmp_path / "a", **opts).fit(ds).losses())
    b = np.array(Daunce(model, workdir=tmp_path / "b", adapter_chunk=2, **opts).fit(ds).losses())
    assert np.isfinite(a).all() and (a.std(0) > 0).all()
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["efim", "margin", "blackbox"])
def test_lm_objectives_run(tmp_path, objective):
    model, ds = tiny("llama"), Prompts()
    d = Daunce(
        model,
        num_models=2,
        steps=2,
        batch_size=4,
        lr=1e-3,
        rank=2,
        objective=objective,
        target="margin" if objective == "margin" else "loss",
        workdir=tmp_path,
    )
    assert np.isfinite(np.array(d.fit(ds).losses())).all()


def test_lm_defaults_fill_only_what_the_caller_left_out(tmp_path):
    from daunce_fast.daunce.config import LM_DEFAULTS

    model = tiny("llama")
    d = Daunce(model, workdir=tmp_path / "a")
    assert d.head.kind == "lm" and d.config.steps == LM_DEFAULTS["steps"] and d.rank == LM_DEFAULTS["rank"]
    assert d.config.optimizer == "adamw" and d.config.perturbation == "xi" and d.config.rho == LM_DEFAULTS["rho"]
    with pytest.raises(ValueError, match="not available with the fused language-model head"):
        Daunce(model, perturbation="hessian")
    d = Daunce(model, workdir=tmp_path / "b", epochs=2, lr=5e-4)
    assert d.config.steps is None and d.config.epochs == 2 and d.config.lr == 5e-4
    from daunce_fast.demos.tasks import mlp

    c = Daunce(mlp(4, 2), workdir=tmp_path / "c")
    assert c.head.kind == "logits" and c.config.steps is None and c.rank == "full"
