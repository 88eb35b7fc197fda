"""Lazy re-exports for a package's `__init__` (PEP 562), so importing one submodule stays light.

`import twotower.contrastive` runs `twotower/__init__.py` first. Were the package's exports
imported there, that one line would load every submodule and, through them, faiss, polars,
pandas, pyarrow and implicit. Instead the `__init__` names the submodule of each export, and
the submodule is imported the first time the name is read; the name is then an ordinary
attribute of the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The `__getattr__`, `__dir__` and `__all__` of a package whose exports load on first use.

    `exports` maps each public name to the submodule, relative to the package, that defines
    it: ``{"info_nce": "contrastive"}``. In the package's `__init__`:
    ``__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)``.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(module, name, value)  # later reads find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *exports})

    module.__class__ = _exports_win(package, exports)
    return __getattr__, __dir__, sorted(exports)


def _exports_win(package: str, exports: Mapping[str, str]) -> type[ModuleType]:
    """A module class on which an export keeps its name when a same-named submodule loads.

    The import system binds each submodule it loads to its package: importing
    `twotower.evaluate` sets the package's `evaluate` to the module. Eager re-exports then
    rebound the name to the export (the function `evaluate`), whichever loaded first; this
    class keeps that so by not binding such a submodule (it is still in `sys.modules`).
    """

    class Package(ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if (name in exports and isinstance(value, ModuleType)
                    and value.__name__ == f"{package}.{name}"):
                return
            super().__setattr__(name, value)

    return Package
