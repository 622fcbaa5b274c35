"""The oracle of the copy-layer tests: copy k as a plain float64 module, built from θ0's parameters
plus copy k's adapter parameters (each kind's definition written out once, independently of the
batched code), run with torch.func.functional_call."""

import copy

import torch
from torch import nn
from torch.func import functional_call

from daunce_fast import lora
from daunce_fast.lora.conv import MultiCopyConv
from daunce_fast.lora.embedding import MultiCopyEmbedding
from daunce_fast.lora.fallback import FallbackCopies
from daunce_fast.lora.layer import MultiLoRALinear


def randomise(model: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Every adapter parameter to fresh random values, so no copy equals θ0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


def effective(layer: lora.CopyLayer, k: int, ad: dict) -> dict:
    """Copy k's parameters of ``layer.base`` (names relative to it) from the float64 adapter tensors
    ``ad`` (suffix -> [K, ...]) and θ0's parameters."""
    base = {n: p.detach().double() for n, p in layer.base.named_parameters()}
    out = dict(base)
    if isinstance(layer, (MultiLoRALinear, MultiCopyEmbedding, MultiCopyConv)) and not layer.full:
        A, B, s = ad["lora_A"][k], ad["lora_B"][k], layer.scaling
        if isinstance(layer, MultiLoRALinear):
            d = s * B @ A
            out["weight"] = base["weight"] + (d.t() if layer.fan_in_fan_out else d)
        elif isinstance(layer, MultiCopyEmbedding):
            out["weight"] = base["weight"] + s * (B @ A).t()
        else:  # conv, groups 1: B 1x1 after A with the layer's kernel
            W = base["weight"]
            out["weight"] = W + s * (B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1)).reshape(W.shape)
        return out
    if isinstance(layer, FallbackCopies):
        return {n: base[n] + ad[f"delta.{n}"][k] for n in base}
    for suffix, pname in (("delta_weight", "weight"), ("delta_bias", "bias")):
        if suffix in ad:
            out[pname] = base[pname] + ad[suffix][k]
    return out


def adapters64(model: nn.Module) -> dict:
    """``{(layer name, suffix): float64 leaf clone}`` of every adapter parameter, gradients on."""
    return {
        (name, suffix): p.detach().double().clone().requires_grad_(True)
        for name, m in lora.lora_modules(model)
        for suffix, p in m.state_items()
    }


def reference_model(orig: nn.Module, wrapped: nn.Module, ad: dict, k: int, batchnorm: str = "eval"):
    """Copy k of the whole model: a float64 deep copy of ``orig`` (θ0) run with copy k's parameters.
    BatchNorm layers normalise as the copy rules say (eval: running statistics; batch: the copy's
    own batch statistics)."""
    ref = copy.deepcopy(orig).double()
    params = {n: p.detach().double() for n, p in ref.named_parameters()}
    for name, m in lora.lora_modules(wrapped):
        mine = {s: t for (n, s), t in ad.items() if n == name}
        for pn, t in effective(m, k, mine).items():
            params[f"{name}.{pn}" if name else pn] = t
    for mod in ref.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.train(mod.training and (batchnorm == "batch" or mod.running_mean is None))
    return lambda *args: functional_call(ref, params, tuple(a.double() if a.is_floating_point() else a for a in args))


def _leaves(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


def check_against_copies(orig, wrapped, inputs, K, in_dims=None, out_dims=None, batchnorm="eval", tol=2e-5):
    """One batched pass of ``wrapped`` (θ0 ``orig`` with copy layers, float32) equals K float64
    copies run one by one on their own rows: outputs, and gradients of a random linear function
    of the outputs with respect to every adapter parameter and to the floating inputs.
    ``in_dims[i]``: the batch dimension of input i (None: shared by every copy); ``out_dims``: of
    each output tensor. Returns the batched outputs."""
    in_dims = in_dims or [0] * len(inputs)
    inputs = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    randomise(wrapped)
    ad = adapters64(wrapped)
    out = _leaves(wrapped(*inputs))
    out_dims = out_dims or [0] * len(out)
    gens = [torch.randn(o.shape, dtype=torch.float64) for o in out]
    sum(((o.double() * g).sum() for o, g in zip(out, gens))).backward()
    ref_out = [[] for _ in out]
    for k in range(K):
        args = [
            x if d is None else x.double().chunk(K, d)[k] if x.is_floating_point() else x.chunk(K, d)[k]
            for x, d in zip(inputs, in_dims)
        ]
        for r, o in zip(ref_out, _leaves(reference_model(orig, wrapped, ad, k, batchnorm)(*args))):
            r.append(o)
    refs = [torch.cat(r, d) for r, d in zip(ref_out, out_dims)]
    for o, r in zip(out, refs):
        torch.testing.assert_close(o.double(), r, rtol=tol, atol=tol)
    float_in = [x for x in inputs if x.is_floating_point()]
    keys = list(ad)
    ref_grads = torch.autograd.grad(
        sum(((r * g).sum() for r, g in zip(refs, gens))),
        [ad[k_] for k_ in keys] + [x for x in float_in],
        allow_unused=True,
    )
    own = {(n, s): p for n, m in lora.lora_modules(wrapped) for s, p in m.state_items()}
    for key, rg in zip(keys, ref_grads[: len(keys)]):
        got = own[key].grad
        want = torch.zeros_like(own[key], dtype=torch.float64) if rg is None else rg
        assert got is not None, key
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=f"adapter gradient of {key}")
    for x, rg in zip(float_in, ref_grads[len(keys) :]):
        if rg is not None:  # the reference saw float64 views of the same float32 leaves
            torch.testing.assert_close(x.grad.double(), rg.double(), rtol=tol, atol=tol, msg="input gradient")
    return out
