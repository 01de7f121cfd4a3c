"""enable_cache / disable_cache: patch a model's blocks with the cached forward, and undo it exactly.

The model's own forward is wrapped to read the step's input ids, padding mask and positions;
each block's forward is replaced (as an instance attribute) by the generic cached forward.
Disabling deletes those attributes, so the class methods (or whatever instance forward was
there before) are back untouched. A deep copy or pickle of a cached model is a cached model
(config and stats kept, features dropped) that undoes the same way. What the patched forwards do
on each step lives in step.py; this module installs them, undoes them, and holds the public cache API.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

from dllm_cache.hooks import adapter_for

from ..analysis.memory import state_bytes
from ..config import CacheConfig
from .block_cache import block_rows_forward
from .block_causal import check_block_causal_config
from .compiled import compiled_block_forward, compiled_block_rows
from .layer import cached_block_forward
from .state import CacheState, Stats
from .step import _block_forward, _head_forward, _model_forward
from .step import rows_only as rows_only  # re-exported: callers of the public API import it from here

_STATE = "_dllm_cache_state"


class _Missing:
    """"No instance attribute was there": one object that deepcopy and pickle keep as itself."""

    def __reduce__(self) -> str:
        return "_MISSING"  # pickled (and deep-copied) by reference to this module's global

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


class _Patched:
    """Everything enable_cache changed, so disable_cache can put it back."""

    def __init__(self, model: nn.Module, state: CacheState, blocks: nn.ModuleList, patches_forward: bool = True):
        self.patches_forward = patches_forward  # False: a block-diffusion model, whose sampler runs the cache
        self.model = model
        self.state = state
        self.blocks = blocks
        self.saved_forwards = [b.__dict__.get("forward", _MISSING) for b in blocks]
        self.saved_model_forward = model.__dict__.get("forward", _MISSING)
        self.head: nn.Module | None = None
        self.saved_head_forward = _MISSING
        self.layer_forward, self.block_forward = _layer_forwards(state.config)

    def __getstate__(self) -> dict:
        """Copies keep config and stats but start without features, captured CUDA graphs or
        compiled code (none of which copy); their next forward starts a new generation."""
        d = dict(self.__dict__)
        old = self.state
        d["state"] = CacheState(old.config, old.n_layers, old.mask_token_id, old.logit_shift)
        d["state"].stats = copy.deepcopy(old.stats)  # its own drift traces
        d["state"].mask_embedding = old.mask_embedding
        d["layer_forward"] = d["block_forward"] = None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self.layer_forward, self.block_forward = _layer_forwards(self.state.config)


def _layer_forwards(config: CacheConfig) -> tuple[Callable, Callable]:
    """(feature-cache layer, block-cache layer), compiled when the config asks."""
    if config.compile:
        return compiled_block_forward(), compiled_block_rows()
    return cached_block_forward, block_rows_forward


def _mask_embedding(model: nn.Module, mask_token_id: int | None) -> torch.Tensor | None:
    """The mask token's input embedding (hidden,): marks the response when a step comes as inputs_embeds.
    Looked up when needed, so it follows the model across .to(device/dtype)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if mask_token_id is None or embedding is None:
        return None
    return embedding.weight[mask_token_id]


def enable_cache(model: nn.Module, config: CacheConfig | None = None) -> nn.Module:
    """Cache `model`'s features between denoising steps. Returns the model (patched in place).

    Enabling an already cached model replaces its config and clears its features.
    """
    config = config or CacheConfig()
    if not isinstance(config, CacheConfig):
        raise TypeError(f"enable_cache expects a dllm_cache.CacheConfig, got {type(config).__name__}.")
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    config.check_layers(len(blocks))  # before undoing a previous cache: a wrong config changes nothing
    if getattr(adapter, "block_causal", False):
        check_block_causal_config(config)
    if is_cache_enabled(model):
        disable_cache(model)
    dims = adapter.dims(model.config)
    state = CacheState(config, len(blocks), getattr(model.config, "mask_token_id", None), adapter.logit_shift)
    state.mask_embedding = partial(_mask_embedding, model, state.mask_token_id)
    if getattr(adapter, "block_causal", False):
        # Block diffusion (LLaDA 2.x): nothing is patched; its sampler runs the cache (engine/block_causal.py)
        # with this config and counts into these stats. A plain forward of the model stays the exact one.
        model.__dict__[_STATE] = _Patched(model, state, nn.ModuleList(), patches_forward=False)
        return model
    patched = _Patched(model, state, blocks)
    if not adapter.graph_capturable:  # host syncs in the block forward: no graph capture, no fullgraph compile
        state.disable_graphs()
        if config.compile:
            warnings.warn(f"dllm-cache: compile=True has no effect on {adapter.family} models (data-dependent "
                          "shapes in the block forward); the cached layer runs eagerly.", stacklevel=2)
            patched.layer_forward = cached_block_forward
            patched.block_forward = block_rows_forward
    for i, block in enumerate(blocks):
        block.forward = partial(_block_forward, patched, adapter, dims, i, adapter.parts(block), block.forward)
    head = adapter.lm_head(model)
    if head is not None:
        patched.head, patched.saved_head_forward = head, head.__dict__.get("forward", _MISSING)
        head.forward = partial(_head_forward, patched, head.forward)
    model.forward = partial(_model_forward, patched, adapter, dims, model.forward)
    model.__dict__[_STATE] = patched
    return model


def disable_cache(model: nn.Module) -> nn.Module:
    """Undo enable_cache exactly; a no-op on a model that is not cached."""
    patched = model.__dict__.pop(_STATE, None)
    if patched is None:
        return model
    for block, saved in zip(patched.blocks, patched.saved_forwards):
        del block.forward
        if saved is not _MISSING:
            block.forward = saved
    if patched.head is not None:
        del patched.head.forward
        if patched.saved_head_forward is not _MISSING:
            patched.head.forward = patched.saved_head_forward
    if getattr(patched, "patches_forward", True):
        del model.forward
    if patched.saved_model_forward is not _MISSING and getattr(patched, "patches_forward", True):
        model.forward = patched.saved_model_forward
    return model


def is_cache_enabled(model: nn.Module) -> bool:
    return _STATE in model.__dict__


def _state(model: nn.Module) -> CacheState:
    patched = model.__dict__.get(_STATE)
    if patched is None:
        raise ValueError("This model has no dllm-cache enabled; call dllm_cache.enable_cache(model) first.")
    return patched.state


def reset_cache(model: nn.Module, prompt_length: int | None = None, block_length: int | None = None) -> None:
    """Start a new generation at the next forward; optionally say where the prompt ends.

    Without it a new generation is still detected when the prompt tokens or the shape change,
    and the prompt is taken to end at the first masked column. With `prompt_length` the
    generation is declared: until the next reset (or a shape change) the prompt tokens are not
    re-compared on every step, which saves a host sync per step. `block_length`: the sampler's
    semi-autoregressive block, the decoding window of the "frontier" selection.
    """
    if block_length is not None and (isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1):
        raise ValueError(f"block_length must be a positive integer or None, got {block_length!r}.")
    _state(model).reset(prompt_length, block_length)


def cache_stats(model: nn.Module, reset: bool = False) -> dict:
    """Step counts by kind, generations started, response refreshes the measured drift triggered
    (`drift_refreshes`, CacheConfig.response_drift_threshold) and the fraction of response tokens
    recomputed on partial steps (each layer's own budget with layer_ratios), counted since the
    cache was enabled (or the last reset=True, which zeroes the counters after reading them).

    "drift", only when steps measured one (a drift-triggered config, or inside `measure_drift`):
    per branch ("cond"; "uncond" for CFG's unconditional pass), flat lists with one entry per step
    that measured a drift (`drift.DriftTrace`): "step" (its index in the generation),
    "since_refresh" (steps since the last response refresh, 1 = the step after it), "drift" (mean
    1 - cos of fresh and cached response Values over rows and V-verify layers; the value
    response_drift_threshold is compared with), and "dropped" (older entries beyond the last
    drift.TRACE_LIMIT)."""
    state = _state(model)
    stats = state.stats.as_dict()
    if reset:
        state.stats = Stats()
    return stats


def cache_memory(model: nn.Module) -> dict[str, int]:
    """Bytes the cache holds now, by kind (see dllm_cache.analysis.memory.state_bytes)."""
    return state_bytes(_state(model))


@contextlib.contextmanager
def cache_enabled(model: nn.Module, config: CacheConfig | None = None) -> Iterator[nn.Module]:
    """`with cache_enabled(model, cfg): ...` caches with `cfg` inside the block only. On exit the
    model is as before: uncached, or cached with its previous config (features start afresh)."""
    previous = _state(model).config if is_cache_enabled(model) else None
    enable_cache(model, config)
    try:
        yield model
    finally:
        if previous is None:
            disable_cache(model)
        else:
            enable_cache(model, previous)


@contextlib.contextmanager
def measure_drift(model: nn.Module) -> Iterator[None]:
    """`with measure_drift(model): ...` makes every cached step inside the block measure its Value
    drift and keep it in cache_stats(model)["drift"], whatever the schedule: e.g. the paper's fixed
    Kr, to choose a CacheConfig.response_drift_threshold (eval/tiny/drift_profile.py). Outputs do
    not change. V-verify computes the similarity anyway; keeping it costs one device-to-host read
    per partial step, and the steps inside run eagerly (no CUDA graph replay), so it is never on by
    default. A drift-triggered config keeps its drift without this. Enter it after enable_cache: a
    cache enabled anew inside the block starts without it."""
    state = _state(model)
    config = state.config
    if config.is_block:
        raise ValueError(f"measure_drift needs the feature cache's V-verify; policy={config.policy!r} measures no "
                         "drift. Use CacheConfig(policy='feature').")
    if config.compile:
        raise ValueError("measure_drift cannot run with CacheConfig(compile=True): the compiled layer returns no "
                         "drift. Measure with compile=False (outputs match up to float rounding).")
    if not config.verifies_values:
        raise ValueError("measure_drift needs V-verify, but partial steps recompute nothing (transfer_ratio, or "
                         "layer_ratios past layer 0, all 0), so no step measures a drift. Give them a budget.")
    previous = state.measuring_drift
    state.measuring_drift = True
    try:
        yield
    finally:
        state.measuring_drift = previous


@contextlib.contextmanager
def declared_generation(model: nn.Module, prompt_length: int, block_length: int | None = None) -> Iterator[None]:
    """One generation by a sampler: declared at the start (no per-step prompt checks; the semi-AR
    block, if any) and closed at the end, so whatever runs next on the model (another sampler, a
    hand-written loop) starts a new generation instead of continuing this one. No-op if uncached."""
    if not is_cache_enabled(model):
        yield
        return
    reset_cache(model, prompt_length=prompt_length, block_length=block_length)
    try:
        yield
    finally:
        if is_cache_enabled(model):
            reset_cache(model)


def note_committed(model: nn.Module, per_row: list[int]) -> None:
    """A sampler committed `per_row[r]` tokens (host ints) in batch row r since the model's last forward:
    the feature cache's response clock counts them (CacheConfig.response_clock "tokens"). Our sampling loop
    calls it after each step; a loop that never does keeps the step clock. No-op if uncached."""
    if is_cache_enabled(model):
        _state(model).note_committed(per_row)


@contextlib.contextmanager
def cache_branch(model: nn.Module, name: str) -> Iterator[None]:
    """Route the forwards inside to their own feature store (CFG's "uncond" pass). No-op if uncached."""
    if not is_cache_enabled(model):
        yield
        return
    state = _state(model)
    previous, state.active_branch = state.active_branch, name
    try:
        yield
    finally:
        state.active_branch = previous
