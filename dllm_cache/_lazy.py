"""Names a package offers without importing their modules up front (a module `__getattr__`, PEP 562).

A subpackage lists `name -> submodule`, and the submodule is imported the first time the name is read.
The engine needs that because `config` imports `engine.kv_store` (importing the whole engine there would
be a cycle); the lm-eval integration because its modules import lm-eval, an optional dependency.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: `name` in `table` is read from `package.<table[name]>`, imported then."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
