"""The generic cached block forward: recompute only the tokens the step plan asks for.

Per layer the block adds two residual deltas, attention output and FFN output. Tokens not
recomputed this step reuse their cached deltas on top of the *current* residual stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel

from dllm_cache.hooks.base import BlockParts, Dims
from dllm_cache.models.layers import attend
from dllm_cache.models.rope import apply_rope

from .drift import layer_drift
from .state import LayerStore, StepContext
from .v_verify import select_drifted, value_similarity

# Few queries against a long sequence at small batch: FlashAttention's split-KV path beats the
# default (cuDNN) kernel on H100, 38 vs 58 us for 8 queries x 4,032 keys x 32 heads; with short
# sequences or more batch x heads cuDNN is as fast or faster (eval/results/attention_backends.md).
_FEW_QUERY_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """attend() for the recomputed queries, with the backend picked for their shape."""
    if q.is_cuda and key_mask is None and q.shape[0] * q.shape[1] <= 64 and q.shape[2] <= 128 and k.shape[2] >= 2048:
        with sdpa_kernel(_FEW_QUERY_BACKENDS):
            return attend(q, k, v, key_mask)
    return attend(q, k, v, key_mask)


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return rearrange(t, "b t (h d) -> b h t d", d=head_dim)


def _gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (batch, tokens, dim), idx (batch, k) -> (batch, k, dim)."""
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def _scatter_tokens(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """dst (batch, tokens, dim)[b, idx[b, j]] = src[b, j], in place."""
    dst.scatter_(1, idx[..., None].expand(-1, -1, dst.shape[-1]), src)


def full_block_forward(parts: BlockParts, dims: Dims, store: LayerStore, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
    """Every token recomputed; K/V and the deltas later steps read are stored. Same arithmetic
    as the uncached block (with an fp8 K/V store, attention reads the K/V as stored)."""
    cos, sin = ctx.rope
    h = parts.attn_norm(x)
    q = apply_rope(_heads(parts.q_proj(h), dims.head_dim), cos, sin)
    kv = store.kv  # K and V written one at a time: one of them is a temporary at once
    kv.write(0, k=apply_rope(_heads(parts.k_proj(h), dims.head_dim), cos, sin))
    kv.write(0, v=_heads(parts.v_proj(h), dims.head_dim))
    attn = parts.out_proj(attend(q, kv.k, kv.v, ctx.key_mask))  # (batch, seq, d_model)
    x = x + attn
    ffn = parts.mlp(parts.ffn_norm(x))
    store.keep_deltas(attn, ffn)
    return x + ffn


def _response_queries(
    parts: BlockParts, dims: Dims, store: LayerStore, ctx: StepContext, hr: torch.Tensor, refresh: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Response side of attention: refresh every response token's K/V, or V-verify and refresh
    the drifted ones. hr: normed response rows (batch, R, d_model).

    Returns (sel, q): selected indices (batch, k) or None for all, and their queries or None.
    """
    P, hd, kv = ctx.prompt_len, dims.head_dim, store.kv
    cos, sin = ctx.rope
    if refresh:
        cr, sr = cos[:, P:], sin[:, P:]
        q = apply_rope(_heads(parts.q_proj(hr), hd), cr, sr)
        kv.write(P, k=apply_rope(_heads(parts.k_proj(hr), hd), cr, sr))
        kv.write(P, v=_heads(parts.v_proj(hr), hd))
        return None, q
    if ctx.selected == 0:  # nothing to recompute: no drift test, no V (as the paper's code does)
        return hr.new_empty(hr.shape[0], 0, dtype=torch.long), None
    v_new = _heads(parts.v_proj(hr), hd)  # (batch, kv_heads, R, hd): needed for the drift test
    sim = None
    if ctx.drift is not None:  # drift-triggered refresh: the step's drift, from V-verify's similarity
        sim = value_similarity(v_new, kv.v[:, :, P:])
        ctx.drift.append(layer_drift(sim))
    sel = select_drifted(v_new, kv.v[:, :, P:], ctx.selected, ctx.priority, sim)  # (batch, k)
    kv.write(P, v=v_new)  # computed anyway: every response V is refreshed
    hs = _gather_tokens(hr, sel)
    cs, ss = _gather_tokens(cos[:, P:], sel), _gather_tokens(sin[:, P:], sel)
    kv.write(P, k=apply_rope(_heads(parts.k_proj(hs), hd), cs, ss), index=sel)
    return sel, apply_rope(_heads(parts.q_proj(hs), hd), cs, ss)


def _store_rows(dst: torch.Tensor, sel: torch.Tensor | None, src: torch.Tensor) -> None:
    """dst (batch, R, d) response rows: all of them (sel None) or the selected ones."""
    if sel is None:
        dst.copy_(src)
    else:
        _scatter_tokens(dst, sel, src)


def response_rows_forward(
    parts: BlockParts, dims: Dims, store: LayerStore, ctx: StepContext, xr: torch.Tensor, first_layer: bool
) -> None:
    """A step that refreshes no prompt row while the LM head serves prompt logits from cache:
    nothing reads the prompt rows, so only the response rows xr (batch, R, d_model) of the
    block input are updated, in place. The common cached step; torch.compile targets this."""
    sel, q = _response_queries(parts, dims, store, ctx, parts.attn_norm(xr), ctx.plan.refresh_response or first_layer)
    if q is not None:
        _store_rows(store.attn, sel, parts.out_proj(_attend_cached(q, store.kv.k, store.kv.v, ctx.key_mask)))
    xr += store.attn
    if sel is None or sel.shape[1]:
        rows = xr if sel is None else _gather_tokens(xr, sel)
        _store_rows(store.ffn, sel, parts.mlp(parts.ffn_norm(rows)))
    xr += store.ffn


def cached_block_forward(
    parts: BlockParts,
    dims: Dims,
    store: LayerStore,
    ctx: StepContext,
    x: torch.Tensor,
    first_layer: bool,
    response_rows: Callable = response_rows_forward,
) -> torch.Tensor:
    """x: (batch, seq, d_model) current layer input -> layer output of the same shape.

    On steps whose prompt rows are dead, x is updated in place (response rows only) by
    `response_rows` (response_rows_forward, or its compiled version).
    """
    plan = ctx.plan
    refresh_response = plan.refresh_response or first_layer  # layer 0's input changes on every unmask
    if plan.refresh_prompt and refresh_response:
        return full_block_forward(parts, dims, store, ctx, x)
    P = ctx.prompt_len
    store.kv.load()  # an fp8 store's K/V into the shared workspace (stale rows are read below)
    if ctx.prompt_rows_dead:
        response_rows(parts, dims, store, ctx, x[:, P:], first_layer)
        return x

    hd = dims.head_dim
    cos, sin = ctx.rope
    queries = []  # recomputed query groups, in order: prompt (if refreshed), then response
    if plan.refresh_prompt:
        hp = parts.attn_norm(x[:, :P])
        cp, sp = cos[:, :P], sin[:, :P]
        queries.append(apply_rope(_heads(parts.q_proj(hp), hd), cp, sp))
        store.kv.write(0, k=apply_rope(_heads(parts.k_proj(hp), hd), cp, sp))
        store.kv.write(0, v=_heads(parts.v_proj(hp), hd))
    sel, q_resp = _response_queries(parts, dims, store, ctx, parts.attn_norm(x[:, P:]), refresh_response)
    if q_resp is not None:
        queries.append(q_resp)

    # Prompt rows' deltas: fresh on a prompt refresh (kept for later only if the store holds
    # them), otherwise the stored ones (this path runs then only for a model whose head is unpatched).
    n_prompt_q = P if plan.refresh_prompt else 0
    prompt_attn = store.prompt_attn
    if queries:
        q = torch.cat(queries, dim=2) if len(queries) > 1 else queries[0]
        o = parts.out_proj(_attend_cached(q, store.kv.k, store.kv.v, ctx.key_mask))  # (batch, n_queries, d_model)
        if plan.refresh_prompt:
            prompt_attn = _keep_prompt(store.prompt_attn, o[:, :P])
        if q_resp is not None:
            _store_rows(store.attn, sel, o[:, n_prompt_q:])

    x = _add_rows(x, prompt_attn, store.attn)  # cached deltas for every token not recomputed
    ffn_in = [x[:, :P]] if n_prompt_q else []
    if sel is None:
        ffn_in.append(x[:, P:])
    elif sel.shape[1]:
        ffn_in.append(_gather_tokens(x[:, P:], sel))
    prompt_ffn = store.prompt_ffn
    if ffn_in:
        f = parts.mlp(parts.ffn_norm(torch.cat(ffn_in, dim=1) if len(ffn_in) > 1 else ffn_in[0]))
        if plan.refresh_prompt:
            prompt_ffn = _keep_prompt(store.prompt_ffn, f[:, :P])
        if sel is None or sel.shape[1]:
            _store_rows(store.ffn, sel, f[:, n_prompt_q:])
    return _add_rows(x, prompt_ffn, store.ffn)


def _keep_prompt(dst: torch.Tensor | None, fresh: torch.Tensor) -> torch.Tensor:
    """Fresh prompt-row deltas (batch, P, d_model), copied into the store when it keeps them."""
    if dst is None:
        return fresh
    dst.copy_(fresh)
    return dst


def _add_rows(x: torch.Tensor, prompt: torch.Tensor | None, response: torch.Tensor) -> torch.Tensor:
    """x (batch, P + R, d_model) plus per-row deltas: prompt (batch, P, d) and response (batch, R, d)."""
    P = x.shape[1] - response.shape[1]
    if prompt is None:
        raise RuntimeError(
            "dllm-cache internal error: prompt rows are live on a cached step but their deltas were "
            "not kept (the LM head was expected to serve them)."
        )
    out = torch.empty_like(x)
    torch.add(x[:, :P], prompt, out=out[:, :P])
    torch.add(x[:, P:], response, out=out[:, P:])
    return out
