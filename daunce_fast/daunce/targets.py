"""Which modules of θ0 carry the K perturbed copies when ``target_modules`` is not given.

One rule, :func:`default_targets`; its semantics are documented in docs/pipeline.md#targets.
"""

from __future__ import annotations

from torch import nn


def is_linear_like(m: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's projections): what MultiLoRALinear wraps."""
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _copy_factory(m: nn.Module):
    """The registered batched copy class of ``m`` (daunce_fast.lora.copies), or None."""
    from ..lora.copies import copy_class_for

    return copy_class_for(m)


def is_fallback(factory) -> bool:
    """True for the generic (torch.func) copy class: slower than a batched one, used only where no
    batched class exists. Recognised by the class attribute ``kind == "fallback"`` of CopyLayer."""
    return getattr(factory, "kind", None) == "fallback"


def wrappable(m: nn.Module) -> bool:
    """``m`` holds parameters and a batched (non-fallback) copy class covers it."""
    if next(m.parameters(), None) is None:
        return False
    if is_linear_like(m):
        return True
    f = _copy_factory(m)
    return f is not None and not is_fallback(f)


def _top_down(model: nn.Module, take) -> list[str]:
    """Names of the modules ``take`` accepts, visiting parents before children and never descending
    into an accepted module (a module wrapped as a whole, e.g. nn.MultiheadAttention, owns its
    children's parameters)."""
    out: list[str] = []

    def visit(prefix: str, mod: nn.Module) -> None:
        if take(mod):
            out.append(prefix)
            return
        if isinstance(mod, nn.MultiheadAttention):
            return  # it reads out_proj.weight directly: its children cannot be wrapped on their own
        for name, child in mod.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return out


def default_targets(model: nn.Module, lm: bool) -> list[str]:
    """The module names perturbed when ``target_modules`` is None (see docs/pipeline.md#targets).

    Classifiers (``lm=False``), the first rule that selects anything:
      1. the linear layers (``nn.Linear`` / ``Conv1D``) outside modules wrapped as a whole (for a
         CNN: its head; for an MLP: every layer);
      2. else every module that holds parameters and that a batched copy class covers
         (``daunce_fast.lora.copies.copy_class_for`` is not None and not the generic fallback):
         convolutions, embeddings, the affine parameters of norms (an all-convolutional network);
      3. else every module that owns parameters directly (``parameters(recurse=False)``) and that
         the fallback covers, including the root ("" = the whole model, e.g. a bare ``nn.Linear``).
    The model is walked parents first, so a module wrapped as a whole never has its children
    listed too. Every BatchNorm keeps the copies independent whether targeted or not
    (``DaunceConfig.batchnorm``). Name convolutions and norms in ``target_modules`` to perturb them.

    Language models (``lm=True``): the linear layers inside the blocks' MLPs (names containing
    ``.mlp.``), the output embedding excluded; every linear layer but it when no name has ``.mlp.``.

    Measured choice (bench/results/lds_cnn.md, a CNN with BatchNorm on digits, K = 256, chosen on
    a fixed half of the test examples and confirmed on the other): perturbing the convolutions and
    norms as well as the head gave LDS 0.093 / 0.087 at the default Adam lr 1e-3 and 0.285 / 0.276
    at lr 2.5e-4, against 0.298 / 0.291 for the head alone at the default lr, in half the time; the
    MLP studies (bench/results/lds.md) perturbed every linear layer. Rule 1 is what both measured
    best. Revisit it with the lr calibration of issue 16: per-layer-type learning rates may make
    the convolutions pay off.
    """
    if lm:
        out_emb = model.get_output_embeddings()
        names = [n for n, m in model.named_modules() if is_linear_like(m) and m is not out_emb]
        return [n for n in names if ".mlp." in f".{n}."] or names
    names = _top_down(model, is_linear_like)
    if names:
        return names
    names = _top_down(model, wrappable)
    if names:
        return names
    own = [
        n
        for n, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None and _copy_factory(m) is not None
    ]
    return own
