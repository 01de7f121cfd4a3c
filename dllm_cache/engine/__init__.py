"""The engine: how a cached model computes a denoising step, and how it is patched in and undone.

    patch.py         enable_cache / disable_cache (exact undo), the public cache API
    step.py          one cached step: the patched model, block and LM-head forwards (logit rows, frontier)
    state.py         the per-model feature store (CacheState, one per cached model, never global)
    layer.py         the generic cached block forward: recompute only the tokens the step plan asks for
    block_cache.py   Fast-dLLM's block K/V cache policies as a forward of the same engine
    block_causal.py  block-diffusion models (LLaDA 2.x): exact K/V of committed blocks, the feature cache in the block
    v_verify.py      V-verify: the response tokens whose Value vectors drifted most
    frontier.py      the frontier selection: the current block first, then V-verify
    schedule.py      which feature groups a step refreshes (the step plan)
    drift.py         drift-triggered response refresh
    layer_budget.py  per-layer budgets (deeper layers may recompute more)
    kv_store.py      where a layer's K/V live: exact or fp8 with per-token scales
    graphs.py        CUDA-graph capture and replay of cached steps
    compiled.py      torch.compile of the cached block forward

Layers, leaves first: v_verify, frontier, kv_store -> schedule, drift, state, layer, block_cache, block_causal,
graphs, compiled -> step -> patch. The names below load on first use, so importing one module of the engine (the config
imports kv_store) does not import all of it.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "enable_cache": "patch",
    "disable_cache": "patch",
    "is_cache_enabled": "patch",
    "reset_cache": "patch",
    "cache_stats": "patch",
    "cache_memory": "patch",
    "cache_enabled": "patch",
    "cache_branch": "patch",
    "measure_drift": "patch",
    "declared_generation": "patch",
    "rows_only": "step",
    "CacheState": "state",
    "KV_CACHE_DTYPES": "kv_store",
    "kv_bytes_per_token_head": "kv_store",
    "ramp_ratios": "layer_budget",
    "plan_step": "schedule",
    "step_kind": "schedule",
    "BlockCausalCache": "block_causal",
}

__all__ = list(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
