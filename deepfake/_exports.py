"""Lazy re-exports for the library's packages.

A package's ``__init__`` names what it offers and the module each name lives in; the module is
imported when the name is first used. So the settings can read a registry (mask types, backbone
names, backend sections, source names) without loading torch, OpenCV or pandas.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, re-exporting ``name`` from
    ``package.<module>`` for every ``name: module`` in ``names``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{names[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
