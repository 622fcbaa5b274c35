"""load_peft refuses an adapter_config.json that is not a PEFT LoRA config with a ValueError naming it."""

import json

import pytest

from daunce_fast import lora

from ._models import mlp


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b'"LORA"',
        b"null",
        b"{broken",
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe",
        b'{"r": "8", "lora_alpha": 8}',
        b'{"r": 8}',
        b'{"r": true, "lora_alpha": 1}',
    ],
    ids=["list", "string", "null", "not-json", "deep", "not-utf8", "r-str", "no-alpha", "r-bool"],
)
def test_load_peft_refuses_configs_that_are_not_lora_configs(tmp_path, content):
    model = mlp()
    lora.attach(model, num_adapters=2, rank=4, alpha=4, target_modules=["0", "2", "4"])
    lora.save_peft(model, 0, str(tmp_path))
    (tmp_path / "adapter_config.json").write_bytes(content)
    with pytest.raises(ValueError, match="adapter_config.json: not a PEFT"):
        lora.load_peft(model, 1, str(tmp_path))


def test_load_peft_round_trip_still_works(tmp_path):
    import torch

    model = mlp()
    lora.attach(model, num_adapters=2, rank=4, alpha=4, target_modules=["0", "2", "4"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    lora.save_peft(model, 0, str(tmp_path))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    lora.load_peft(model, 1, str(tmp_path))
    for name, p in model.named_parameters():
        if p.requires_grad and "lora" in name:
            assert torch.equal(p[0], p[1]), name
