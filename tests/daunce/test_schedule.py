"""The learning-rate schedule's warm-up and the documented adapter rank of language models."""

import math

import pytest

from daunce_fast.daunce import Daunce, DaunceConfig
from daunce_fast.daunce.config import LM_DEFAULTS
from daunce_fast.daunce.trainer import lr_factor, warmup_steps


def test_lm_default_warmup_of_30_steps_warms_up():
    cfg = DaunceConfig(**{k: v for k, v in LM_DEFAULTS.items()})
    total = cfg.steps
    assert total == 30 and cfg.extra["warmup"] == 0.03
    assert warmup_steps(cfg, total) == math.ceil(0.03 * 30) == 1
    assert lr_factor(cfg, 0, total) == 0.5  # the warm-up step runs below the full rate
    assert lr_factor(cfg, 1, total) == 1.0  # then the cosine starts at 1
    assert lr_factor(cfg, total - 1, total) < 0.01


def test_warmup_steps_round_up_and_ramp_linearly():
    cfg = DaunceConfig(extra={"warmup": 0.1}, schedule="constant")
    assert warmup_steps(cfg, 25) == 3  # ceil(2.5)
    assert [lr_factor(cfg, s, 25) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_steps(DaunceConfig(), 25) == 0 and lr_factor(DaunceConfig(schedule="constant"), 0, 25) == 1.0
    assert warmup_steps(DaunceConfig(extra={"warmup": 0.5}), 1) == 1


@pytest.mark.parametrize("extra", [{"warmup": -0.1}, {"warmup": 1.0}, {"warmup": "0.1"}, {"warmup": True}, []])
def test_bad_warmup_is_refused(extra):
    with pytest.raises(ValueError, match="warmup"):
        DaunceConfig(extra=extra).validate()


def test_rank_property_of_language_models_is_what_the_code_uses(tmp_path):
    transformers = pytest.importorskip("transformers")
    from daunce_fast import lora

    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert LM_DEFAULTS["rank"] == 16 and "16" in Daunce.rank.__doc__ and "64" not in Daunce.rank.__doc__
    for kw in ({}, {"rank": None}):  # the default, and an explicit None, both mean LM_DEFAULTS["rank"]
        d = Daunce(model, workdir=tmp_path / f"r{len(kw)}", num_models=2, **kw)
        assert d.rank == 16
        m, _ = d._model_for([0, 1])
        assert {mod.rank for _, mod in lora.lora_modules(m)} == {16}
