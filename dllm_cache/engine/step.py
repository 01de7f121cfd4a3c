"""One cached denoising step: what the patched forwards of the model, its blocks and its LM head do.

enable_cache (patch.py) installs these as partials bound to the model's `_Patched` record. The model's
forward reads the step's input (ids or embeddings, padding mask, positions, `logits_to_keep`), asks the
CacheState for the step plan, lays out the LM head's rows and tracks the frontier; each block's forward
runs the feature-cache or block-cache layer the plan asks for; the head computes only the rows the
caller asked for. This module imports nothing from patch.py, so the dependency runs patch -> step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dllm_cache.models.layers import key_mask_from
from dllm_cache.models.rope import rope_cos_sin

from ..analysis.memory import check_generation_fits
from .drift import step_drift
from .frontier import frontier_priority
from .graphs import graphable, run_step
from .layer import full_block_forward
from .state import CacheState, StepContext

if TYPE_CHECKING:  # annotations only: patch.py imports this module
    from .patch import _Patched


def _arg(args: tuple, kwargs: dict, pos: int, *names: str):
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[pos] if len(args) > pos else None


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, seq) keep-mask from a 2-D 0/1 mask or a 4-D boolean / additive mask."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:  # (batch, 1, q, k): bidirectional, so any query row will do
        row = attention_mask[:, 0, -1, :]
        attention_mask = row if row.dtype == torch.bool else row == 0
    if bool(attention_mask.all()):  # host sync, but only on prompt refreshes (never inside a graph)
        return None
    return key_mask_from(attention_mask)


def rows_only(logits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of (batch, seq, vocab) logits in their own memory (the whole tensor as is)."""
    return logits if (lo, hi) == (0, logits.shape[1]) else logits[:, lo:hi].clone()


def _logit_rows(logits_to_keep, seq: int) -> tuple[int, int]:
    """Rows [lo, hi) whose logits a forward returns, from transformers-style `logits_to_keep`:
    0 or None all rows, an int N the last N rows, a slice(lo, hi) those rows."""
    if logits_to_keep is None:
        return 0, seq
    if isinstance(logits_to_keep, int) and not isinstance(logits_to_keep, bool) and logits_to_keep >= 0:
        return max(seq - (logits_to_keep or seq), 0), seq
    if isinstance(logits_to_keep, slice) and logits_to_keep.step in (None, 1):
        lo, hi, _ = logits_to_keep.indices(seq)
        if lo < hi:
            return lo, hi
    raise ValueError(
        f"logits_to_keep={logits_to_keep!r} is not supported for a sequence of {seq} rows: pass 0 (all rows), "
        "an int N >= 0 (the last N rows) or a non-empty slice(lo, hi) with step 1."
    )


class _InferenceOnly(torch.autograd.Function):
    """Identity on the logits; its backward says why there is no gradient (instead of PyTorch's
    "does not require grad", which would not name the cache)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError(
            "dllm-cache: the cached forward is inference-only (cached features carry no gradient). "
            "Call dllm_cache.disable_cache(model) before training or computing gradients, or enable the "
            "cache only around generation (`with dllm_cache.cache_enabled(model): ...`)."
        )


def _inference_only(out, anchor: torch.Tensor):
    """The model output with its logits routed through _InferenceOnly."""
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        out.logits = _InferenceOnly.apply(out.logits, anchor)
    elif isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        out = (_InferenceOnly.apply(out[0], anchor), *out[1:])
    return out


def _model_forward(patched: _Patched, adapter, dims, original, *args, **kwargs):
    state = patched.state
    input_ids = _arg(args, kwargs, 0, "input_ids")
    inputs_embeds = kwargs.get("inputs_embeds")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(
            "dllm-cache needs exactly one of input_ids (batch, seq) or inputs_embeds (batch, seq, hidden) in the "
            "model call."
        )
    # The step's input: token ids, or embeddings (a multimodal prompt, e.g. LLaDA-V's image features, is
    # cached like any prompt: its rows are compared and its features reused between prompt refreshes).
    tokens = input_ids if input_ids is not None else inputs_embeds
    attention_mask = _arg(args, kwargs, 1, "attention_mask")
    # LLaDA-family models (official LLaDA, MMaDA) also take the padding mask as a 4-D boolean attention_bias.
    mask_source = attention_mask if attention_mask is not None else kwargs.get("attention_bias")
    lo, hi = _logit_rows(kwargs.pop("logits_to_keep", None), tokens.shape[1])
    branch, plan = state.begin_step(tokens, (lo, hi))
    if branch.step == 1:  # step 0 of a generation: say now if its cache cannot fit
        n_prompt_rows = max(min(hi, branch.prompt_len) - lo, 0)
        check_generation_fits(patched.model, list(patched.blocks), branch, tokens, hi - lo, n_prompt_rows,
                              prompt_deltas=patched.head is None, deltas=not state.config.is_block,
                              kv_cache_dtype=state.config.kv_cache_dtype)
    if plan.refresh_prompt or branch.rope_cos is None:
        # Positions and padding are fixed within a generation: computed on prompt refreshes only,
        # into persistent buffers that captured graphs read.
        batch, seq = tokens.shape[:2]
        positions = kwargs.get("position_ids")
        if positions is None:
            mask2d = mask_source if mask_source is not None and mask_source.dim() == 2 else None
            positions = adapter.positions(mask2d, batch, seq, tokens.device)
        cos, sin = rope_cos_sin(positions.expand(batch, seq), dims.head_dim, dims.rope_theta)
        branch.persist("rope_cos", cos)
        branch.persist("rope_sin", sin)
        branch.persist("key_mask", _key_mask(mask_source))
    layout = _logit_layout(patched, branch, plan, lo, hi, tokens.device)
    state.ctx = StepContext(
        plan=plan,
        prompt_len=branch.prompt_len,
        rope=(branch.rope_cos, branch.rope_sin),
        key_mask=branch.key_mask,
        selected=state.selected_count(branch, tokens.shape[1]),
        layer_selected=state.layer_counts(branch, tokens.shape[1]) if state.config.layer_ratios is not None else None,
        drift=[] if state.measures_drift else None,
        head_cached=patched.head is not None,
        logit_rows=(lo, hi),
        rows_index=branch.block_index if plan.kind == "block" else None,
    )
    rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "inputs_embeds", "attention_mask")}

    def forward(x, mask):
        if input_ids is not None:
            _track_frontier(state, branch, plan, x)  # needs token ids: with embeddings, V-verify alone
            return original(x, attention_mask=mask, **rest)
        # Embeddings reach the first block as they are, and cached steps update a block input's response
        # rows in place: give the model a copy, never the caller's tensor.
        return original(inputs_embeds=x.clone(), attention_mask=mask, **rest)

    # Gradients wanted: let a backward fail with a message that names the cache.
    anchor = next((p for p in patched.model.parameters() if p.requires_grad), None) if torch.is_grad_enabled() else None
    try:
        with torch.no_grad():
            if args[2:]:  # unusual positional arguments: keep the plain call
                out = original(*args, **kwargs)
            elif graphable(state.config, plan.kind, tokens, branch, state.graphs_disabled or state.measuring_drift):
                out = run_step(branch, plan.kind, forward, tokens, attention_mask, state.disable_graphs, layout)
            else:
                out = forward(tokens, attention_mask)
        if state.ctx.drift is not None:  # plans the next step (drift.plan_drift_step); kept in cache_stats
            state.note_drift(branch, plan, step_drift(state.ctx.drift))
    finally:
        state.ctx = None
    if patched.head is None and (lo, hi) != (0, tokens.shape[1]):
        out = _with_logits(out, rows_only(out.logits, lo, hi))  # no head to patch: every row was computed
    return out if anchor is None else _inference_only(out, anchor)


def _logit_layout(patched: _Patched, branch, plan, lo: int, hi: int, device) -> tuple[int, ...]:
    """Prepare the LM head's rows for this step; returns what a captured step bakes in.

    Between prompt refreshes the head computes response rows [max(lo, P), hi) through the
    persistent index `branch.logit_index` (so one captured graph serves every LLaDA block) and
    serves prompt rows [lo, min(hi, P)) from the logits kept at the last prompt refresh."""
    P = branch.prompt_len
    if plan.kind == "block":  # block policies: the recomputed rows, and the asked ones among them
        _persist_block_index(branch, plan.rows, device)
        if patched.head is not None:
            _persist_logit_index(branch, lo, hi, device)
        return "block", plan.rows[1] - plan.rows[0], hi - lo
    if patched.head is None or plan.refresh_prompt:
        return ()
    start = max(lo, P)
    _persist_logit_index(branch, start, hi, device)
    n_prompt = max(min(hi, P) - lo, 0)
    kept_lo, kept_hi = branch.prompt_logit_rows
    if n_prompt and not (kept_lo <= lo and lo + n_prompt <= kept_hi):
        raise ValueError(
            f"logits of prompt rows {lo}..{lo + n_prompt - 1} were asked for on a cached step, but the last "
            f"prompt refresh kept prompt rows {kept_lo}..{kept_hi - 1} only: between prompt refreshes the cache "
            "serves prompt-row logits from the last refresh. Ask for the same prompt rows on every step "
            "(logits_to_keep), or for response rows only."
        )
    return n_prompt, lo - kept_lo if n_prompt else 0, hi - start


def _persist_block_index(branch, rows: tuple[int, int], device) -> None:
    """Rows [lo, hi) a block step recomputes, in the persistent index of that row count (captured graphs
    read it; the graph key holds the count). Two counts are kept (block_start="incremental": a block
    start's and a block step's); a third (block-prefix's shrinking regions) drops the graphs and indexes."""
    lo, hi = rows
    index = branch.block_indexes.get(hi - lo)
    if index is not None and index.device == torch.device(device):
        index.copy_(torch.arange(lo, hi, device=device))  # in place: the address a captured graph reads
    else:
        if index is not None or len(branch.block_indexes) >= 2:
            branch.drop_graphs()
            branch.block_indexes.clear()
        index = branch.block_indexes[hi - lo] = torch.arange(lo, hi, device=device)
    branch.block_index = index


def _persist_logit_index(branch, start: int, hi: int, device) -> None:
    """Rows [start, hi) the patched LM head computes, in the persistent index captured graphs read."""
    if branch.logit_index is None or branch.logit_index.numel() != hi - start or branch.logit_index_start != start:
        branch.persist("logit_index", torch.arange(start, hi, device=device))
        branch.logit_index_start = start


def _with_logits(out, logits: torch.Tensor):
    """A copy of the model output with other logits (the output object of a captured step is reused)."""
    if not hasattr(out, "logits"):
        raise ValueError(
            f"logits_to_keep needs a model output with .logits, got {type(out).__name__}; call the model with "
            "return_dict=True or without logits_to_keep."
        )
    return type(out)(**{**out, "logits": logits})


def _track_frontier(state: CacheState, branch, plan, ids: torch.Tensor) -> None:
    """"frontier" selection: remember the response tokens at each response refresh, and on the
    other steps mark what to recompute first (ctx.priority). Runs inside the step's forward, so a
    captured CUDA graph redoes it from each replay's input ids."""
    config = state.config
    if config.is_block or config.selection != "frontier" or state.mask_token_id is None:
        return
    tokens = ids[:, branch.token_prompt_len :]  # (batch, R) generated region
    if plan.refresh_response:
        branch.persist("refresh_tokens", tokens)
        return
    aligned = branch.block_length is not None and config.frontier_window is None
    state.ctx.priority = frontier_priority(
        tokens, branch.refresh_tokens, state.mask_token_id, config.window(branch.block_length), aligned,
        row_offset=branch.token_prompt_len - branch.prompt_len, logit_shift=state.logit_shift,
    )


def _block_forward(patched: _Patched, adapter, dims, index: int, parts, original, *args, **kwargs):
    state = patched.state
    ctx = state.ctx
    if ctx is None:  # called outside the model's forward: behave as the plain block
        return original(*args, **kwargs)
    x = _arg(args, kwargs, 0, "hidden_states", "x")
    branch = state.branch()
    if ctx.plan.kind == "block":
        out = patched.block_forward(parts, dims, branch.layers[index], ctx, x)
    elif ctx.plan.refresh_prompt and ctx.plan.refresh_response:
        store = branch.store_for(index, state.n_layers, x, dims.n_kv_heads, dims.head_dim, not ctx.head_cached,
                                 deltas=not state.config.is_block, kv_cache_dtype=state.config.kv_cache_dtype)
        out = full_block_forward(parts, dims, store, ctx, x)
    else:
        store = branch.layers[index]
        out = patched.layer_forward(parts, dims, store, ctx.for_layer(index), x, index == 0)
    return adapter.block_output(out)


def _head_forward(patched: _Patched, original, h: torch.Tensor, *args, **kwargs):
    """LM head on the rows the caller asked for, h (batch, seq, d_model) -> (batch, hi - lo, vocab).

    Prompt rows' logits come from the last prompt refresh (prompt hidden states are reused between
    refreshes, so these are the logits they would give; their rows of h are stale); response rows
    are computed. Dream reads row P-1 for the first response token: a cached prompt row, as in the
    paper's cache."""
    state = patched.state
    ctx = state.ctx
    if ctx is None:
        return original(h, *args, **kwargs)
    branch = state.branch()
    P = ctx.prompt_len
    lo, hi = ctx.logit_rows
    if ctx.plan.kind == "block":  # the asked rows lie inside the recomputed ones
        return original(h.index_select(1, branch.logit_index), *args, **kwargs)
    n_prompt = max(min(hi, P) - lo, 0)
    if ctx.plan.refresh_prompt:
        logits = original(h[:, lo:hi], *args, **kwargs)
        branch.persist("prompt_logits", logits[:, :n_prompt] if n_prompt else None)
        branch.prompt_logit_rows = (lo, lo + n_prompt)
        return logits
    tail = original(h.index_select(1, branch.logit_index), *args, **kwargs)  # rows [max(lo, P), hi)
    if not n_prompt:
        return tail
    offset = lo - branch.prompt_logit_rows[0]
    logits = tail.new_empty(tail.shape[0], n_prompt + tail.shape[1], tail.shape[2])
    logits[:, :n_prompt] = branch.prompt_logits[:, offset : offset + n_prompt]
    logits[:, n_prompt:] = tail
    return logits
