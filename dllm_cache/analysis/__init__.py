"""Analysis: what a cached generation costs, computed from the shapes (and checked against a live cache).

    flops.py   analytic FLOPs and bytes of one denoising step and of a whole generation (ModelDims)
    memory.py  bytes the cache holds (measured or from the shapes), peak estimates and the fits-in-memory check

The names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "ModelDims": "flops",
    "STEP_KINDS": "flops",
    "step_flops": "flops",
    "step_bytes": "flops",
    "generation_cost": "flops",
    "generation_flops": "flops",
    "NotEnoughMemoryError": "memory",
    "state_bytes": "memory",
    "estimate_cache_bytes": "memory",
    "bytes_per_token_layer": "memory",
    "check_generation_fits": "memory",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
