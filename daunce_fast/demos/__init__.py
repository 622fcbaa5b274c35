"""Demos and the small tasks they (and the tests and LDS studies) share:

  digits        `daunce-fast demo`: DAUNCE on scikit-learn's digits, with a PNG figure
  lm_backdoor   `daunce-fast demo --lm`: backdoor-poisoned pairs of a small Llama
  tasks         bundled tabular tasks (no download), the MLP and its trainer

Importing this package is cheap: the demos' heavy dependencies (torch, scikit-learn, matplotlib,
transformers) are imported by the functions that use them. ``require_extra`` checks them first.
"""

from __future__ import annotations


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` or raise MissingExtraError naming ``pip install "daunce_fast[<extra>]"``."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise MissingExtraError(
                f'{m} is not installed; install it with: pip install "daunce_fast[{extra}]"'
            ) from None


def in_workdir(workdir, prefix: str, run):
    """``run(wd, tmp)`` in ``workdir`` (kept, resumable; tmp None) or, without one, in ``run/`` of a
    temporary directory ``tmp`` (named ``prefix...``) that is removed when ``run`` returns or raises."""
    import os
    import tempfile

    if workdir is not None:
        return run(str(workdir), None)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return run(os.path.join(tmp, "run"), tmp)


def closing_line(t_start: float, wd: str, tmp: str | None) -> tuple[float, str | None]:
    """Print a demo's last line (seconds since ``t_start``; the workdir it keeps, or that its
    temporary files are removed); returns (those seconds, the kept workdir or None)."""
    import time
    from pathlib import Path

    total = time.perf_counter() - t_start
    kept = None if tmp is not None else wd
    print(
        f"total {total:.1f} s; " + (f"workdir {Path(wd).resolve()}" if kept is not None else "temporary files removed")
    )
    return total, kept


__all__ = ["MissingExtraError", "require_extra", "in_workdir", "closing_line"]
