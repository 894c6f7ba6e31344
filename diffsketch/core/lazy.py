"""Public names of a subpackage, imported on first use (PEP 562).

Each subpackage's ``__init__`` declares what other subpackages may import from it, as a table of
``module: [names]``; a name's module is imported only when the name is used, so importing a
package is free and ``diffsketch --help`` never loads torch. Unlike a cached lazy import, every
access reads the module's current attribute, so a name seen through the package and through its
module is always the same object.

Example:
    >>> import types
    >>> getattr_, dir_, all_ = attach("os", submod_attrs={"path": ["join"]})
    >>> all_
    ['join']
    >>> getattr_("join")("a", "b") == __import__("os").path.join("a", "b")
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable


def attach(
    package: str, *, submodules: Iterable[str] = (), submod_attrs: dict[str, list[str]] | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package named ``package``.

    Args:
        package: the package's ``__name__``.
        submodules: submodules handed out as namespaces (``from diffsketch.core import images``).
        submod_attrs: for each submodule, the public names it defines.
    """
    modules = set(submodules)
    owner = {name: module for module, names in (submod_attrs or {}).items() for name in names}
    public = sorted(modules | set(owner))

    def __getattr__(name: str) -> object:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in owner:
            return getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return list(public)

    return __getattr__, __dir__, public
