"""Export one adapter slot as a PEFT LoRA checkpoint, and import one back.

``save_peft(model, k, dir)`` writes ``adapter_model.safetensors`` + ``adapter_config.json`` such
that ``peft.PeftModel.from_pretrained(base, dir)`` (``base`` = the model without adapters, e.g.
after :func:`detach`) computes what slot ``k`` computes. PEFT is not needed to save or load.

GPT-2: its projections are transformers ``Conv1D`` (``weight [d_in, d_out]``), which
``attach`` supports directly; PEFT stores LoRA weights for Conv1D targets exactly as for
``nn.Linear`` (``lora_A [r, d_in]``, ``lora_B [d_out, r]``) and sets ``fan_in_fan_out`` itself,
so the files are the same; the config says ``fan_in_fan_out: true`` when every target is a Conv1D.
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from .attach import lora_modules
from .layer import MultiLoRALinear

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


def _modules(model):
    mods = lora_modules(model)
    if not mods:
        raise RuntimeError("no adapters are attached to this model")
    other = [(n, m.kind_label()) for n, m in mods if not isinstance(m, MultiLoRALinear)]
    if other:
        raise NotImplementedError(
            f"save_peft/load_peft handle LoRA on nn.Linear / Conv1D layers only; {other[:5]} have no PEFT "
            "checkpoint format here (use adapter_state / load_adapter_state)"
        )
    if any(m.full for _, m in mods):
        raise NotImplementedError(
            "rank='full' adapters are dense weight deltas; a PEFT LoRA checkpoint cannot hold "
            "them (use adapter_state / load_adapter_state)"
        )
    ranks = {m.rank for _, m in mods}
    alphas = {m.alpha for _, m in mods}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(
            f"save_peft/load_peft want one rank and alpha for all layers, got ranks {ranks}, alphas {alphas}"
        )
    return mods


def _slot(mods, k):
    K = mods[0][1].num_adapters
    if not 0 <= k < K:
        raise IndexError(f"adapter slot {k} out of range for {K} adapters")


def save_peft(model: nn.Module, k: int, directory: str, base_model_name_or_path: str | None = None) -> None:
    """Write adapter slot ``k`` as a PEFT LoRA adapter (safetensors + config) into ``directory``."""
    from safetensors.torch import save_file

    mods = _modules(model)
    _slot(mods, k)
    m0 = mods[0][1]
    tensors = {}
    for name, m in mods:
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = m.lora_A[k].detach().to("cpu").contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = m.lora_B[k].detach().to("cpu").contiguous()
    names = [n for n, _ in mods]
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": m0.rank,
        "lora_alpha": m0.alpha,
        "lora_dropout": m0.dropout_p,
        # A regex over the exact module names: PEFT full-matches a string target_modules.
        "target_modules": "^(" + "|".join(re.escape(n) for n in names) + ")$",
        "fan_in_fan_out": all(m.fan_in_fan_out for _, m in mods),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def _read_config(directory: str) -> dict:
    """``adapter_config.json`` as a dict with the fields load_peft reads; ValueError naming the file
    when it is not JSON, not an object, or lacks an int ``r`` / a number ``lora_alpha``."""
    path = os.path.join(directory, CONFIG)
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read(1 << 24).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: not a PEFT adapter config (JSON nested too deeply)") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEFT adapter config (not JSON: {exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a PEFT adapter config (a JSON {type(config).__name__}, not an object)")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if (
        not isinstance(r, int)
        or isinstance(r, bool)
        or r < 1
        or not isinstance(alpha, (int, float))
        or isinstance(alpha, bool)
    ):
        raise ValueError(
            f"{path}: not a PEFT LoRA config: 'r' must be a positive int and 'lora_alpha' a number, "
            f"got r={r!r}, lora_alpha={alpha!r}"
        )
    return config


@torch.no_grad()
def load_peft(model: nn.Module, k: int, directory: str) -> None:
    """Read a PEFT LoRA adapter (``adapter_model.safetensors`` or ``.bin``) into slot ``k``.

    The adapter must target exactly the attached layers with the same rank and scaling
    (``lora_alpha / r``; rsLoRA and DoRA checkpoints are refused)."""
    mods = _modules(model)
    _slot(mods, k)
    config = _read_config(directory)
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise ValueError(f"{directory}: only plain LoRA adapters can be loaded (peft_type/use_dora/use_rslora)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{directory}: per-layer rank_pattern/alpha_pattern is not supported")
    m0 = mods[0][1]
    if int(config["r"]) != m0.rank or float(config["lora_alpha"]) / int(config["r"]) != m0.scaling:
        raise ValueError(
            f"{directory}: r={config['r']}, lora_alpha={config['lora_alpha']} do not match the attached "
            f"rank {m0.rank}, alpha {m0.alpha}"
        )
    path = os.path.join(directory, WEIGHTS)
    if os.path.exists(path):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(os.path.join(directory, "adapter_model.bin"), map_location="cpu", weights_only=True)
    # PEFT drops the adapter name from saved keys; tolerate files that kept it (".lora_A.default.weight").
    state = {re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", key): v for key, v in state.items()}
    wanted = set()
    for name, m in mods:
        for part, param in (("lora_A", m.lora_A), ("lora_B", m.lora_B)):
            key = f"{_PREFIX}{name}.{part}.weight"
            wanted.add(key)
            if key not in state:
                raise KeyError(f"{directory}: no tensor {key}")
            t = state[key]
            if tuple(t.shape) != tuple(param.shape[1:]):
                raise ValueError(f"{directory}: {key} has shape {tuple(t.shape)}, want {tuple(param.shape[1:])}")
            param[k].copy_(t)
    extra = sorted(k_ for k_ in state if ".lora_" in k_ and k_ not in wanted)
    if extra:
        raise ValueError(f"{directory}: adapter has LoRA weights for layers that are not attached: {extra[:5]}")
