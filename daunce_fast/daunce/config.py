"""Hyper-parameters of a DAUNCE run, their defaults and their validation.

Defaults are the ones measured best on the bundled LDS evaluation (bench/quality/lds.py, figures in
bench/RESULTS.md), not copied from the paper; lr and epochs of classifiers are calibrated per run
("auto", daunce/calibration.py), chosen on the transfer suite (bench/results/transfer.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

OBJECTIVES = ("if", "efim", "margin", "blackbox")
PERTURBATIONS = ("xi", "hessian")

# Defaults that replace the classifier defaults below when the model is a causal language model
# (head "lm"), for every option the caller did not give; measured on bench/quality/lm_backdoor.py (see
# bench/RESULTS.md): rank 16 vs 64, rho 1.0 vs 0.3, lr 1e-3 vs 3e-4, 30 vs 60 steps scored alike,
# these are the cheapest. Scores of LMs default to Pearson (covariance lets clean sequences with
# large, high-variance losses outrank the poisoned ones whose loss is near zero).
LM_DEFAULTS = dict(
    rank=16, rho=1.0, perturbation="xi", optimizer="adamw", lr=1e-3, steps=30, batch_size=16, extra={"warmup": 0.03}
)
# rho when none is given, per perturbation (bench/quality/lds_sweep.py on digits and breast_cancer: xi is best
# at 0.3; "hessian" at 0.03, from 0.001-1; see bench/RESULTS.md)
RHO_DEFAULTS = {"xi": 0.3, "hessian": 0.03}
SCORE_METHOD = {"logits": "covariance", "lm": "pearson"}
TARGETS = ("loss", "margin")
OPTIMIZERS = ("adam", "adamw", "sgd")
BATCHNORM_MODES = ("eval", "batch")


@dataclass
class DaunceConfig:
    num_models: int = 512  # K perturbed models
    ratio: float = 0.5  # subset ratio r: each model trains on round(r * N) examples
    objective: str = "if"  # see docs/objectives.md#objectives / daunce_fast.losses.objectives
    rho: float | None = None  # perturbation strength (of the weights c_ik, or of the "hessian"
    # directions); None: RHO_DEFAULTS[perturbation]
    perturbation: str | None = None  # "hessian": Gaussian first-order directions whose covariance is
    # the cross-entropy's Hessian in the logits (objective "if",
    # built-in loss); "xi": the paper's random weights c_ik on the
    # observed gradient (see perturb.py and heads.py); None: "hessian"
    # for objective "if", else "xi" (language models and custom
    # loss_fn: "xi", set by Daunce)
    gamma: float = 1.0  # weight of the regulariser R_k
    target: str = "loss"  # recorded per-example target: loss, or -margin
    rank: int | str | None = None  # LoRA rank, or "full" for dense weight deltas (None: "full" for
    # classifiers, LM_DEFAULTS["rank"] for language models)
    head: str = "auto"  # "logits", "lm" (fused loss head of HF causal LMs) or "auto"
    alpha: float | None = None  # LoRA alpha (default: rank, i.e. scaling 1)
    target_modules: list[str] | str | None = None  # None: every nn.Linear
    optimizer: str = "adam"
    lr: float | str = "auto"  # "auto": calibrated by fit from the number of steps and θ0's training loss
    # (daunce/calibration.py, docs/pipeline.md#calibration); Adam/AdamW only
    weight_decay: float = 0.0
    epochs: float | str | None = "auto"  # passes over each model's subset (ignored when steps is set);
    # "auto": calibration.AUTO_EPOCHS
    steps: int | None = None  # optimiser steps per model
    batch_size: int = 128  # examples per model per step
    schedule: str = "cosine"  # "cosine" or "constant"
    max_grad_norm: float | None = None  # per-adapter clipping
    adapter_chunk: int | None = None  # models trained together (None: all, capped by row_budget)
    row_budget: int = 65536  # max rows (models x examples) in one batched forward
    antithetic: bool = False  # pairs of models share a subset and use xi and 1 - xi
    batchnorm: str = "eval"  # BatchNorm while the copies train: "eval" normalises with θ0's running
    # statistics; "batch" with each copy's own batch statistics (never mixed across copies); θ0's
    # buffers never change; recording always uses θ0's running statistics (docs/pipeline.md#batchnorm)
    dropout: bool = False  # True: the model's dropout modules stay active while the copies train
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.perturbation is None:
            self.perturbation = "hessian" if self.objective == "if" else "xi"
        if self.rho is None and self.perturbation in RHO_DEFAULTS:
            self.rho = RHO_DEFAULTS[self.perturbation]

    def validate(self) -> DaunceConfig:
        def bad(msg):
            raise ValueError(f"Daunce: {msg}")

        if int(self.num_models) < 2:
            bad(f"num_models must be >= 2 (correlation across models), got {self.num_models}")
        if not 0.0 < float(self.ratio) <= 1.0:
            bad(f"ratio must be in (0, 1], got {self.ratio}")
        if self.objective not in OBJECTIVES:
            bad(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.perturbation not in PERTURBATIONS:
            bad(f"perturbation must be one of {PERTURBATIONS}, got {self.perturbation!r}")
        if self.rho is None or not float(self.rho) > 0:
            bad(f"rho must be > 0, got {self.rho}")
        if self.perturbation == "hessian" and self.objective != "if":
            bad(f"perturbation 'hessian' needs objective 'if' (got {self.objective!r})")
        if self.target not in TARGETS:
            bad(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.head not in ("auto", "logits", "lm"):
            bad(f"head must be 'auto', 'logits' or 'lm', got {self.head!r}")
        if self.rank not in (None, "full") and (not isinstance(self.rank, int) or self.rank < 1):
            bad(f"rank must be a positive int or 'full', got {self.rank!r}")
        if self.lr != "auto" and (
            isinstance(self.lr, (bool, str))
            or not isinstance(self.lr, (int, float))
            or not 0 <= float(self.lr) < float("inf")
        ):
            bad(f"lr must be a number >= 0 or 'auto', got {self.lr!r}")
        if self.lr == "auto" and self.optimizer not in ("adam", "adamw"):
            bad(f"lr='auto' is calibrated for Adam/AdamW; give lr for optimizer {self.optimizer!r}")
        if self.steps is None and self.epochs != "auto":
            e = self.epochs
            if e is None or isinstance(e, (bool, str)) or not isinstance(e, (int, float)) or not e > 0:
                bad(f"give steps, a positive number of epochs or epochs='auto', got epochs={e!r}")
        if self.steps is not None and self.steps < 1:
            bad(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            bad(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in ("cosine", "constant"):
            bad(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.adapter_chunk is not None and self.adapter_chunk < 1:
            bad(f"adapter_chunk must be >= 1, got {self.adapter_chunk}")
        warmup = self.extra.get("warmup", 0.0) if isinstance(self.extra, dict) else None
        if (
            not isinstance(self.extra, dict)
            or not isinstance(warmup, (int, float))
            or isinstance(warmup, bool)
            or not 0.0 <= warmup < 1.0
        ):
            bad(f"extra must be a dict whose 'warmup' (fraction of the steps) is in [0, 1), got {self.extra!r}")
        if self.batchnorm not in BATCHNORM_MODES:
            bad(f"batchnorm must be one of {BATCHNORM_MODES}, got {self.batchnorm!r}")
        if not isinstance(self.dropout, bool):
            bad(f"dropout must be True or False, got {self.dropout!r}")
        if self.antithetic and self.num_models % 2:
            bad("antithetic pairs need an even num_models")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    # Fields that change what a model is trained to (a resumed run must match them exactly).
    def training_fingerprint(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("adapter_chunk", "row_budget", "num_models"):
            d.pop(k)
        return d
