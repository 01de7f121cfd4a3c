"""dllm-cache: a training-free feature cache for diffusion language models (LLaDA, Dream).

    import dllm_cache
    from dllm_cache import generate
    dllm_cache.enable_cache(model)          # CacheConfig(): Kp=100, Kr=8, transfer_ratio=0.25
    out = generate(model, input_ids, attention_mask, gen_length=256, steps=256)

The package, by concern:
    config.py      CacheConfig: every knob, documented once and validated at construction
    engine/        the cache itself: patching and exact undo, per-model state, the cached layer forward,
                   selection (V-verify, frontier), the step schedule, drift, K/V stores, CUDA graphs, compile
    sampling/      the LLaDA and Dream denoising loops, unmasking rules, sampler options, decoding traces
    analysis/      analytic FLOPs and memory
    bench/         `dllm-cache bench` (`python -m dllm_cache.bench`): speed, FLOPs and memory
    models/        our LLaDA / Dream / LLaDA-MoE / MMaDA classes, registered with transformers' Auto classes
    hooks          one adapter per model family (source: the top-level hooks/ folder)
    integrations/  lm-evaluation-harness (`dllm-cache eval`)
    serving/       an OpenAI-compatible server (`dllm-cache serve`)
    cli.py         the `dllm-cache` command; shipped.py finds the shipped model and prompts
"""

import importlib.util as _ilu

if _ilu.find_spec(__name__ + ".hooks") is None:  # a check, not a path hack: installs map hooks/ to dllm_cache.hooks
    raise ImportError(
        "dllm_cache.hooks is missing: the repository's top-level hooks/ folder is installed as dllm_cache.hooks by "
        "pip. From a source checkout run `pip install -e .` (or `pip install --no-deps --no-build-isolation -e .` "
        "where dependencies are already there, as on a bare GPU machine: `bash eval/gpu/install_checkout.sh`); "
        "PYTHONPATH=. alone does not map it."
    )

from . import models  # noqa: E402, F401  (registers LLaDA and Dream with transformers' Auto classes)
from .config import CacheConfig  # noqa: E402
from .engine.patch import (  # noqa: E402
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
from .sampling.generate import generate  # noqa: E402
from .sampling.trace import DecodeTrace, ReplaySchedule  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "DecodeTrace",
    "ReplaySchedule",
    "cache_branch",
    "cache_enabled",
    "cache_memory",
    "cache_stats",
    "disable_cache",
    "enable_cache",
    "generate",
    "is_cache_enabled",
    "measure_drift",
    "reset_cache",
]
