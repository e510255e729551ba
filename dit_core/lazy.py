"""Lazy exports (PEP 562): a package or module names what it exports and the module defining each, and
a name's module is imported on its first use. `dit_core.data`, `dit_core.diffusion` and `dit_core.train`
use it so that `dit_core.config`, and with it the sweep launcher's check of its cells, import without
torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module whose ``globals()`` is ``namespace`` (a package's
    ``__init__`` or a plain module); ``exports`` map a name to the module that defines it, relative to
    the module's package (``{"DataConfig": ".config"}``). A name is cached in the module once imported."""
    name_of, package = namespace["__name__"], namespace["__package__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {name_of!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
