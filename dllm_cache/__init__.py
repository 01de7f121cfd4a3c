"""dllm-cache: a training-free feature cache for diffusion language models (LLaDA, Dream).

    import dllm_cache
    dllm_cache.enable_cache(model)          # CacheConfig(): Kp=100, Kr=8, transfer_ratio=0.25
"""

from . import models  # noqa: F401  (registers LLaDA and Dream with transformers' Auto classes)
from .config import CacheConfig
from .patch import (
    cache_branch,
    cache_enabled,
    cache_stats,
    disable_cache,
    enable_cache,
    is_cache_enabled,
    reset_cache,
)

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "cache_branch",
    "cache_enabled",
    "cache_stats",
    "disable_cache",
    "enable_cache",
    "is_cache_enabled",
    "reset_cache",
]
