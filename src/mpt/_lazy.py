"""PEP 562 lazy exports: a package names what it offers, and a name's module is imported on first use.

Why: ``mpt --help`` and ``import mpt.data`` must not pay for torch and transformers (seconds) when
the code they run never touches them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``table`` maps an exported name to its submodule (``".api"``); returns ``__getattr__, __dir__``."""

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
