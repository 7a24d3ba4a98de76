"""PEP 562 lazy attribute loading shared by the package's ``__init__`` modules.

Each package lists ``{public name: submodule}``; the submodule is imported the first time the
name is read, so ``import diffblocks`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, table: Dict[str, str]) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """Return ``(__getattr__, __dir__)`` for ``package`` resolving names through ``table``.

    ``table`` maps a public name to the module (relative to ``package``) that defines it.
    """

    def __getattr__(name: str) -> object:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        value = getattr(module, name)
        # cache on the package so the next access is a plain attribute read
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> List[str]:
        pkg = importlib.import_module(package)
        return sorted(set(vars(pkg)) | set(table))

    return __getattr__, __dir__
