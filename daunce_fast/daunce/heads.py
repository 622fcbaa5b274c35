"""How the pipeline turns a model's forward pass into DAUNCE objectives and recorded targets.

LogitsHead  any model whose output is the logits (classifiers; custom ``loss_fn``): explicit
            outputs, objectives from daunce_fast.daunce.objectives, first-order direction by
            autograd at the base outputs z0 (computed once per training set).
LMHead      Hugging Face causal language models: the backbone's final hidden states go through
            the frozen output embedding with the fused loss head of daunce_fast.losses, so no
            [K * rows, T, V] logits are ever materialised. Labels follow Hugging Face's
            convention (aligned with input_ids, -100 = ignored); they are shifted here:
            hidden[:, :-1] predicts labels[:, 1:]. The base's hidden states are computed once per
            training set and kept on the CPU.
"""

from __future__ import annotations

import torch

from .data import call_model, model_outputs, num_rows, repeat_for_models
from .objectives import base_terms, cross_entropy_per_example, daunce_loss, margin_per_example, neg_margin_per_example


def is_causal_lm(model) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None and getattr(model, "base_model", model) is not model


@torch.no_grad()
def base_pass(model, examples, block: int, fn) -> torch.Tensor:
    """cat of ``fn(model, inputs).float().cpu()`` over blocks of ``block`` examples, the model in
    eval mode (restored afterwards): the frozen base's outputs over a whole dataset."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return torch.cat(
            [
                fn(model, examples.take(torch.arange(j0, min(len(examples), j0 + block)), device)[0]).float().cpu()
                for j0 in range(0, len(examples), block)
            ]
        )
    finally:
        model.train(was)


def hessian_direction(sq0: torch.Tensor, normals: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Perturbation "hessian": scale_k * (sq0 * n - p0 * <sq0, n>) per row, sq0 = sqrt(p0), p0 = softmax(z0).

    sq0 [K*b, C] square roots of the base's class probabilities (adapter-major rows), normals
    [K, b, C] standard normals n, scale [K] (rho, signed). With A = diag(p0) - p0 p0ᵀ (the
    Hessian of the cross-entropy in the logits), (diag(sq0) - p0 sq0ᵀ) n has covariance A exactly
    (because sum(p0) = 1), so the perturbation's covariance in parameter space is the Gauss-Newton
    matrix H and the scores estimate g_iᵀ(H+λ)⁻¹g_j rather than the sandwich
    g_iᵀ(H+λ)⁻¹F(H+λ)⁻¹g_j of the xi weights (F the empirical Fisher; bench/quality/lds_linear.py
    computes both limits).
    """
    n = normals.reshape(sq0.shape).to(device=sq0.device, dtype=sq0.dtype)
    sn = sq0 * n
    d = sn - (sq0 * sq0) * sn.sum(-1, keepdim=True)
    # scale_k on model k's rows through a [K, b, C] view (no repeat_interleave copy); same products
    K, b = normals.shape[:2]
    return (d.view(K, b, -1) * scale.to(device=sq0.device, dtype=sq0.dtype).view(K, 1, 1)).view(sq0.shape)


def _checked_forward(forward_fn):
    """``forward_fn`` whose result goes through data.model_outputs (tuple/dict rules, leading size)."""

    def forward(model, inputs):
        return model_outputs(forward_fn(model, inputs), num_rows(inputs), "forward_fn")

    return forward


def _checked_loss(loss_fn):
    """``loss_fn`` checked on every call: it must return one loss per example, a tensor [B] for
    outputs [B, ...]; ValueError naming the shape it returned otherwise (at the first batch, before
    any training step)."""

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = loss_fn(z, y)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (z.shape[0],):
            got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"Daunce: loss_fn returned {got} for outputs {tuple(z.shape)} and labels {tuple(y.shape)}; "
                f"it must return the loss of each example, shape [{z.shape[0]}] (e.g. "
                "F.cross_entropy(..., reduction='none'), averaged over tokens for sequence outputs)"
            )
        return t

    return loss


class LogitsHead:
    kind = "logits"

    def __init__(self, cfg, forward_fn=None, loss_fn=None):
        self.cfg = cfg
        self.forward = call_model if forward_fn is None else _checked_forward(forward_fn)
        self.loss_fn = cross_entropy_per_example if loss_fn is None else _checked_loss(loss_fn)
        self.train_target = neg_margin_per_example if cfg.objective == "margin" else self.loss_fn
        # Shared prefix (docs/pipeline.md#shared-prefix): only for the default forward (a custom
        # forward_fn may call the model in any way); cfg.extra["share_prefix"]: True (default), False
        # (off), "always" (keep the training cache even when it does not measure faster).
        self.share_prefix = forward_fn is None and cfg.extra.get("share_prefix", True) is not False
        self._prefix_store: dict = {}  # the training set's cached shared values, reused across chunks
        self._prefix_examples, self._prefix_generation = None, 0

    @torch.no_grad()
    def base_tables(self, model, examples, row_budget: int) -> dict | None:
        if self.cfg.objective == "blackbox":
            return None
        z0 = base_pass(model, examples, row_budget, self.forward)
        t0, g0 = base_terms(z0, examples.labels, self.train_target)
        tables = {"z0": z0, "t0": t0, "g0": g0}
        if self.cfg.perturbation == "hessian":  # once here, not per step: softmax of [K*b, C] is slow
            if z0.dim() != 2:
                raise ValueError(
                    f"Daunce: perturbation 'hessian' needs outputs [rows, classes], got shape {tuple(z0.shape)}; "
                    "pass perturbation='xi' for sequence outputs"
                )
            tables["sq0"] = torch.softmax(z0, dim=-1).sqrt()
        return tables

    def training_prefix(self, model, examples, K: int):
        """The shared prefix's cache over the training set ``examples`` for ``model`` in its current
        (training) modes (lora.shared_prefix.training_prefix), or None: pass it to :meth:`objective`.
        Budget: ``cfg.extra["share_prefix_cache_bytes"]`` (default 1 GiB)."""
        if not self.share_prefix:
            return None
        from ..lora import shared_prefix

        device = next(model.parameters()).device
        budget = int(self.cfg.extra.get("share_prefix_cache_bytes", shared_prefix.DEFAULT_CACHE_BYTES))
        # the store is keyed on a generation that changes whenever another examples object comes (an
        # identity test against the one held here, never id(), which a freed object's successor can
        # reuse): a stale cache would train the copies on another training set's values
        if self._prefix_examples is not examples:
            self._prefix_examples = examples
            self._prefix_generation += 1
        return shared_prefix.training_prefix(
            model,
            K,
            len(examples),
            lambda idx: examples.take(idx, device)[0],
            budget_bytes=budget,
            store=self._prefix_store,
            store_key=(self._prefix_generation, len(examples), str(device)),
            require_faster=self.cfg.extra.get("share_prefix", True) != "always",
        )

    def fused_target(self, base) -> str | None:
        """The target the fused objective (daunce/fused_head.py) computes for this head, or None when
        the reference path must run (custom loss_fn, "blackbox", outputs other than [rows, classes])."""
        from .fused_head import OBJECTIVES, TARGETS

        if base is None or self.cfg.objective not in OBJECTIVES or base["z0"].dim() != 2:
            return None
        return TARGETS.get(self.train_target)

    def row_terms(self, base, idx: torch.Tensor, c: torch.Tensor, noise=None):
        """(g [R, C], a [R], t0 [R], c [R]) of fused_head.first_order_terms for the examples
        ``idx [K, n]`` of the K models (R = K * n) with weights ``c [K, n]`` and ``noise`` (normals
        [K, n, C], scale [K]) or None; None when :meth:`fused_target` is None. Per row only: the rows
        of a whole chunk (a table looked up per step) give the same values as the same rows computed
        per step."""
        if self.fused_target(base) is None:
            return None
        from .fused_head import first_order_terms

        flat = idx.reshape(-1)
        z0, g0, t0 = (base[k].index_select(0, flat) for k in ("z0", "g0", "t0"))
        if noise is None:
            return first_order_terms(z0, g0, t0, c)
        return first_order_terms(z0, g0, t0, c, noise[0], noise[1], base["sq0"].index_select(0, flat))

    def objective(
        self, model, inputs, y, flat_idx, c, K: int, base, noise=None, prefix=None, terms=None
    ) -> torch.Tensor:
        """The K per-model objectives of one step; ``prefix`` (from :meth:`training_prefix`) gathers
        the shared prefix's values of the rows ``flat_idx`` instead of recomputing them. ``terms``:
        :meth:`row_terms` of the step's rows (then ``c`` and ``noise`` are already in them and the
        fused objective runs: same math, one autograd node), or None (the reference daunce_loss)."""
        if prefix is None:
            z = self.forward(model, inputs)
        else:
            z = prefix.forward(
                inputs,
                flat_idx,
                reference=lambda inp: self.forward(model, inp),
                pick=model_outputs,
            )
        if terms is not None:
            from .fused_head import fused_objective

            return fused_objective(
                z,
                y,
                *terms,
                num_models=K,
                objective=self.cfg.objective,
                gamma=self.cfg.gamma,
                target=self.fused_target(base),
            )
        if base is None:
            z0 = t0 = g0 = None
        else:
            z0, t0, g0 = (base[k].index_select(0, flat_idx).to(z.device) for k in ("z0", "t0", "g0"))
            if noise is not None:
                sq0 = base["sq0"].index_select(0, flat_idx).to(z.device)
                g0 = g0 + hessian_direction(sq0, *noise).to(g0.dtype)
        obj, _ = daunce_loss(
            z,
            y,
            c,
            num_models=K,
            objective=self.cfg.objective,
            gamma=self.cfg.gamma,
            target_fn=self.train_target,
            z0=z0,
            t0=t0,
            g0=g0,
        )
        return obj

    @torch.no_grad()
    def record(self, model, inputs, y, K: int) -> torch.Tensor:
        """Targets [K, n] of the same n examples under the K adapters (lower = better). With the
        shared prefix, what precedes the first copy layer runs once on the n rows."""
        if self.share_prefix:
            from ..lora import shared_prefix

            z = shared_prefix.repeated_forward(
                model,
                inputs,
                K,
                reference=lambda inp: self.forward(model, repeat_for_models(inp, K)),
                pick=model_outputs,
            )
        else:
            z = self.forward(model, repeat_for_models(inputs, K))
        yk = repeat_for_models((y,), K)[0]
        t = self.loss_fn(z, yk) if self.cfg.target == "loss" else -margin_per_example(z, yk)
        return t.view(K, -1)


class LMHead:
    kind = "lm"

    def __init__(self, cfg, ignore_index: int = -100):
        self.cfg = cfg
        self.ignore_index = ignore_index

    def hidden(self, model, inputs) -> torch.Tensor:
        """Final hidden states [B, T-1, d] that predict tokens 1..T-1."""
        backbone = model.base_model
        out = backbone(**inputs) if isinstance(inputs, dict) else backbone(*inputs)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return h[:, :-1]

    @staticmethod
    def head(model):
        emb = model.get_output_embeddings()
        return emb.weight, getattr(emb, "bias", None)

    @torch.no_grad()
    def base_tables(self, model, examples, row_budget: int) -> dict | None:
        if self.cfg.objective == "blackbox":
            return None
        block = max(1, row_budget // examples.labels.shape[1])
        return {"h0": base_pass(model, examples, block, self.hidden)}

    def objective(self, model, inputs, y, flat_idx, c, K: int, base, noise=None) -> torch.Tensor:
        from .. import losses

        h = self.hidden(model, inputs)
        w, b = self.head(model)
        h0 = None if base is None else base["h0"][flat_idx].to(device=h.device, dtype=h.dtype)
        obj, _ = losses.daunce_objective(
            h,
            h0,
            w.detach(),
            y[:, 1:],
            c if base is not None else None,
            objective=self.cfg.objective,
            gamma=self.cfg.gamma,
            num_adapters=K,
            bias=None if b is None else b.detach(),
            ignore_index=self.ignore_index,
        )
        return obj

    @torch.no_grad()
    def record(self, model, inputs, y, K: int) -> torch.Tensor:
        from .. import losses

        h = self.hidden(model, repeat_for_models(inputs, K))
        yk = repeat_for_models((y,), K)[0][:, 1:]
        w, b = self.head(model)
        if self.cfg.target == "loss":
            t = losses.per_example_loss(h, w, yk, bias=b, ignore_index=self.ignore_index)
        else:
            t = -losses.margin(h, w, yk, bias=b, ignore_index=self.ignore_index)
        return t.view(K, -1)
