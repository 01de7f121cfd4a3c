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
