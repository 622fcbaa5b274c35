"""Transitional: the launchers' old import path. ``_prep`` was split into source.py (the reader),
options.py and standardise.py; this re-export goes once cpu_launch.py, torch_launch.py and
triton_launch.py import from .standardise (their owner's change)."""
from .standardise import TileStats, first_stats_overflow, standardise_torch  # noqa: F401
