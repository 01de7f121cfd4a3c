"""dllm-cache: a training-free feature cache for diffusion language models (LLaDA, Dream).

    import dllm_cache
    dllm_cache.enable_cache(model)          # CacheConfig(): Kp=100, Kr=8, transfer_ratio=0.25
"""

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path


def _source_checkout_hooks() -> None:
    """Installs map the top-level hooks/ folder to dllm_cache.hooks; in a bare source checkout
    (PYTHONPATH=.) load it from beside this package under the same name."""
    if _ilu.find_spec(__name__ + ".hooks") is not None:
        return
    init = _Path(__file__).resolve().parent.parent / "hooks" / "__init__.py"
    spec = _ilu.spec_from_file_location(__name__ + ".hooks", init, submodule_search_locations=[str(init.parent)])
    module = _ilu.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["hooks"] = module


_source_checkout_hooks()

from . import models  # noqa: E402, F401  (registers LLaDA and Dream with transformers' Auto classes)
from .config import CacheConfig  # noqa: E402
from .patch import (  # noqa: E402
    cache_branch,
    cache_enabled,
    cache_memory,
    cache_stats,
    disable_cache,
    enable_cache,
    is_cache_enabled,
    measure_drift,
    reset_cache,
)

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "cache_branch",
    "cache_enabled",
    "cache_memory",
    "cache_stats",
    "disable_cache",
    "enable_cache",
    "is_cache_enabled",
    "measure_drift",
    "reset_cache",
]
