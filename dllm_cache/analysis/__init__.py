"""Analysis: what a cached generation costs, computed from the shapes (and checked against a live cache).

    flops.py   analytic FLOPs and bytes of one denoising step and of a whole generation (ModelDims)
    memory.py  bytes the cache holds (measured or from the shapes), peak estimates and the fits-in-memory check
    paired.py  the exact McNemar test of a cached run against uncached on the same problems

The names below load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

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
    "mcnemar_exact": "paired",
    "paired_object": "paired",
}

__all__ = list(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
