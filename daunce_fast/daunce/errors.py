"""Exceptions raised by the DAUNCE pipeline (daunce_fast.daunce)."""

from __future__ import annotations


class WorkdirError(ValueError):
    """A Daunce workdir cannot be used for this run: its ``state.json`` is unreadable or invalid,
    it holds another run (another θ0, training set, configuration or format version), or one of
    its loss stores was recorded from other data or another run. The message names the file and
    what differs, and says how to start afresh (``Daunce(..., overwrite=True)`` or a new workdir).
    """
