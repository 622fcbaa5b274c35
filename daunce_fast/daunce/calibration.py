"""``lr="auto"`` and ``epochs="auto"``: the copies' training length and learning rate set from the
training set and θ0, with no ground truth (docs/pipeline.md#calibration).

The rule (chosen on the 18 tasks of the transfer suite's two halves, judged on its FRESH tasks;
bench/results/transfer.md):

    epochs = AUTO_EPOCHS                                   (when "auto" and no ``steps``)
    S      = optimiser steps of one copy = steps, or round(epochs * ceil(round(ratio * N) / batch_size))
    lr     = DISPLACEMENT / (S * (1 + L0 / LOSS_SCALE))    (when "auto"; Adam/AdamW only)

L0 = θ0's mean training target over the whole training set (the head's ``t0``; cross-entropy for the
built-in loss), computed by the base pass the fit needs anyway, so calibrating costs no extra pass.

Why: Adam moves every parameter by about lr per step whatever the gradient's scale, so lr * S bounds
how far a copy can move. On the suite the best (lr, epochs) cells cluster around lr * S ≈ 0.02 across
data sets of 142-1437 examples (1-6 steps per epoch), while θ0's own learning rate, optimiser and the
Hessian's sharpness did not predict them. Under-fit θ0s (training loss 0.13-0.72 where converged ones
sit below 0.006) want 5-10x less: there every copy keeps training θ0 in one common direction, which
swamps the per-copy differences the scores are made of. lr is rounded to 3 significant digits so
that the same θ0 and data give the same value on any device and thread count.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

AUTO = "auto"
AUTO_EPOCHS = 10  # 10 and 20 met the 0.97 goal on the same 12 of 18 tasks; 10 costs half
DISPLACEMENT = 0.02  # lr * S of a converged θ0
LOSS_SCALE = 0.05  # L0 at which the displacement halves
CALIBRATED_OPTIMIZERS = ("adam", "adamw")
# diagnostics of the first trained chunk
STILL_SPREAD = 1e-5  # median spread across copies / median |target| below this: rounding-level differences
ROSE_FACTOR = 3.0  # copies' mean training loss above ROSE_FACTOR * L0 + 0.1: the copies went uphill


def wants_calibration(cfg) -> bool:
    """True when ``cfg`` leaves the lr or the epochs to the calibration."""
    return cfg.lr == AUTO or (cfg.steps is None and cfg.epochs == AUTO)


def steps_of(cfg, n: int, epochs: float) -> int:
    """Optimiser steps of one copy over a training set of ``n`` examples at ``epochs`` (the trainer's
    count: trainer.steps_per_model of a subset of perturb.subset_size examples)."""
    from .perturb import subset_size
    from .trainer import steps_per_model

    return steps_per_model(dataclasses.replace(cfg, epochs=epochs), subset_size(n, cfg.ratio))


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


@dataclass
class Calibration:
    """What ``fit`` chose and from what. ``lr``/``epochs``: the values the copies train with;
    ``lr_source``/``epochs_source``: "auto" (calibrated) or "given"; ``steps``: optimiser steps of
    one copy; ``theta0_loss``: L0; ``rule``: the formula, for the log."""

    lr: float
    epochs: float | None
    steps: int
    lr_source: str
    epochs_source: str
    theta0_loss: float | None
    num_train: int
    rule: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = [
            f"lr {self.lr:g} ({self.lr_source})",
            f"epochs {self.epochs:g} ({self.epochs_source})" if self.epochs is not None else "epochs -",
            f"{self.steps} steps per copy over {self.num_train} examples",
        ]
        if self.theta0_loss is not None:
            parts.append(f"θ0's mean training loss {self.theta0_loss:.4g}")
        return "Daunce calibration: " + ", ".join(parts) + (f"; rule: {self.rule}" if self.rule else "")


def calibrate(cfg, n: int, theta0_loss: float | None) -> Calibration:
    """The values of ``cfg``'s "auto" fields for a training set of ``n`` examples whose mean
    training target under θ0 is ``theta0_loss`` (explicit values are kept). Pure and deterministic."""
    epochs_auto = cfg.steps is None and cfg.epochs == AUTO
    epochs = None if cfg.steps is not None else (float(AUTO_EPOCHS) if epochs_auto else float(cfg.epochs))
    steps = steps_of(cfg, n, epochs if epochs is not None else 0.0)
    rule = ""
    if cfg.lr == AUTO:
        if cfg.optimizer not in CALIBRATED_OPTIMIZERS:
            raise ValueError(
                f"Daunce: lr='auto' is calibrated for {CALIBRATED_OPTIMIZERS} (a step of Adam moves every "
                f"parameter by about lr); give lr for optimizer {cfg.optimizer!r}"
            )
        if theta0_loss is None or not math.isfinite(theta0_loss):
            raise ValueError(
                f"Daunce: lr='auto' needs θ0's mean training loss, which is {theta0_loss}; give lr explicitly"
            )
        shrink = 1.0 + max(0.0, theta0_loss) / LOSS_SCALE
        lr = _round3(DISPLACEMENT / (steps * shrink))
        rule = f"lr = {DISPLACEMENT} / (steps * (1 + L0 / {LOSS_SCALE})) = {DISPLACEMENT} / ({steps} * {shrink:.4g})"
    else:
        lr = float(cfg.lr)
    return Calibration(
        lr=lr,
        epochs=epochs,
        steps=steps,
        lr_source=AUTO if cfg.lr == AUTO else "given",
        epochs_source=AUTO if epochs_auto else ("steps" if cfg.steps is not None else "given"),
        theta0_loss=None if theta0_loss is None else float(theta0_loss),
        num_train=int(n),
        rule=rule,
    )


def resolved(cfg, cal: Calibration):
    """``cfg`` with the calibrated values in place of "auto" (a copy; ``cfg`` is not changed)."""
    return dataclasses.replace(cfg, lr=cal.lr, epochs=cal.epochs if cal.epochs is not None else cfg.epochs)


def diagnose(rows: np.ndarray, theta0_loss: float | None, *, loss_target: bool) -> dict:
    """Health of the first trained chunk, from its recorded training-set targets ``rows`` [K_c, N]:
    ``spread`` = median over examples of the std across copies, relative to the median |target|;
    ``copies_loss`` = mean target; ``nonfinite`` = count of non-finite targets; ``warnings``: "diverged"
    (non-finite targets, or with ``loss_target`` the copies' mean loss above ROSE_FACTOR * L0 + 0.1),
    "still" (spread below STILL_SPREAD: the copies differ by rounding, the scores are noise)."""
    r = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(r)
    nonfinite = int((~finite).sum())
    out: dict = {"nonfinite": nonfinite, "warnings": []}
    if r.shape[0] >= 2 and finite.all():
        scale = float(np.median(np.abs(r))) or 1e-30
        out["spread"] = float(np.median(r.std(axis=0))) / scale
        out["copies_loss"] = float(r.mean())
        if out["spread"] < STILL_SPREAD:
            out["warnings"].append(
                f"still: the copies' training losses differ by {out['spread']:.2g} of their size (rounding "
                "level), so the scores are noise; raise lr or epochs"
            )
        if loss_target and theta0_loss is not None and out["copies_loss"] > ROSE_FACTOR * theta0_loss + 0.1:
            out["warnings"].append(
                f"diverged: the copies' mean training loss {out['copies_loss']:.4g} is far above θ0's "
                f"{theta0_loss:.4g}; lower lr"
            )
    if nonfinite:
        out["warnings"].append(f"diverged: {nonfinite} recorded training targets are not finite; lower lr")
    return out
