"""Names of a package resolved on first use (PEP 562 module ``__getattr__`` / ``__dir__``), so that
importing the package stays cheap. Imports nothing but importlib and sys."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable


def lazy_names(
    package: str, attrs: dict[str, tuple[str, str]], public: Iterable[str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``attrs[name] = (module, attribute)`` (a module
    relative to ``package``) and the ``submodules`` are imported when first read, then kept in the
    package's namespace; any other missing name raises AttributeError. ``__dir__`` lists ``public``."""
    subs = frozenset(submodules)
    listed = sorted(public)

    def __getattr__(name: str) -> object:
        if name in attrs:
            mod, attr = attrs[name]
            value = getattr(importlib.import_module(mod, package), attr)
        elif name in subs:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(listed)

    return __getattr__, __dir__
