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


__all__ = ["MissingExtraError", "require_extra"]
