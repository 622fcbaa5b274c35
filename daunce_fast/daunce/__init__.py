"""The DAUNCE pipeline: perturbed objectives, batched training of K models, loss recording, scoring."""

from .config import DaunceConfig
from .ensemble import ensemble_scores
from .errors import WorkdirError
from .pipeline import Daunce

__all__ = ["Daunce", "DaunceConfig", "WorkdirError", "ensemble_scores"]
