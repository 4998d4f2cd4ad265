"""Packages whose public names are imported from their submodules on first use (PEP 562), so
that importing a light part of slatte (a config, the command line's parser) does not import
torch through the package `__init__`s on the way. `dir()`, `help()` and tab completion list
every public name before any is imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType


class _LazyPackage(ModuleType):
    """A package module that imports its public names on first access."""

    # public name -> (the submodule that holds it, its attribute there; None: the submodule)
    _exports: dict[str, tuple[str, str | None]]

    def __getattr__(self, name: str):
        if name not in self._exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        source, attribute = self._exports[name]
        module = importlib.import_module(source, self.__name__)
        value = module if attribute is None else getattr(module, attribute)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it on its package; where it shares its name with a
        # function the package exports (ops.attention), the package keeps the function, as an
        # eager `from .attention import attention` does.
        source, attribute = self._exports.get(name, (None, None))
        if isinstance(value, ModuleType) and attribute is not None:
            value = getattr(importlib.import_module(source, self.__name__), attribute)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*vars(self), *self._exports})


def lazy_package(
    package: str, exports: Mapping[str, Sequence[str]], submodules: Sequence[str] = ()
) -> list[str]:
    """Make the package named `package` import, on first access, each name of `exports`
    (relative submodule -> the names it defines, e.g. {".config": ["SLAConfig"]}) and each of
    its public `submodules`. Returns the exported names, for `__all__`."""
    table: dict[str, tuple[str, str | None]] = {name: (f".{name}", None) for name in submodules}
    table.update({name: (source, name) for source, names in exports.items() for name in names})
    module = sys.modules[package]
    module.__dict__["_exports"] = table
    module.__class__ = _LazyPackage
    return sorted(name for names in exports.values() for name in names)
