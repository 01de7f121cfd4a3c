"""The generic cached block forward: recompute only the tokens the step plan asks for.

Per layer the block adds two residual deltas, attention output and FFN output. Tokens not
recomputed this step reuse their cached deltas on top of the *current* residual stream.
"""

from __future__ import annotations

import torch
from einops import rearrange

from dllm_cache.hooks.base import BlockParts, Dims
from dllm_cache.models.layers import attend
from dllm_cache.models.rope import apply_rope

from .select import select_drifted
from .state import LayerStore, StepContext


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return rearrange(t, "b t (h d) -> b h t d", d=head_dim)


def _gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (batch, tokens, dim), idx (batch, k) -> (batch, k, dim)."""
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def _scatter_tokens(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """dst (batch, tokens, dim)[b, idx[b, j]] = src[b, j], in place."""
    dst.scatter_(1, idx[..., None].expand(-1, -1, dst.shape[-1]), src)


def _scatter_heads(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """dst (batch, heads, tokens, hd)[b, :, idx[b, j]] = src[b, :, j], in place."""
    index = idx[:, None, :, None].expand(-1, dst.shape[1], -1, dst.shape[-1])
    dst.scatter_(2, index, src)


def full_block_forward(parts: BlockParts, dims: Dims, store: LayerStore, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
    """Every token recomputed; all features stored. Same arithmetic as the uncached block."""
    cos, sin = ctx.rope
    h = parts.attn_norm(x)
    q = apply_rope(_heads(parts.q_proj(h), dims.head_dim), cos, sin)
    store.k.copy_(apply_rope(_heads(parts.k_proj(h), dims.head_dim), cos, sin))
    store.v.copy_(_heads(parts.v_proj(h), dims.head_dim))
    store.attn.copy_(parts.out_proj(attend(q, store.k, store.v, ctx.key_mask)))
    x = x + store.attn
    store.ffn.copy_(parts.mlp(parts.ffn_norm(x)))
    return x + store.ffn


def cached_block_forward(
    parts: BlockParts,
    dims: Dims,
    store: LayerStore,
    ctx: StepContext,
    x: torch.Tensor,
    first_layer: bool,
) -> torch.Tensor:
    """x: (batch, seq, d_model) current layer input -> layer output of the same shape.

    On steps that do not refresh the prompt, x is updated in place (response rows only).
    """
    plan = ctx.plan
    refresh_response = plan.refresh_response or first_layer  # layer 0's input changes on every unmask
    if plan.refresh_prompt and refresh_response:
        return full_block_forward(parts, dims, store, ctx, x)

    P = ctx.prompt_len
    hd = dims.head_dim
    cos, sin = ctx.rope
    queries = []  # recomputed query groups, in order: prompt (if refreshed), then response

    if plan.refresh_prompt:
        hp = parts.attn_norm(x[:, :P])
        cp, sp = cos[:, :P], sin[:, :P]
        queries.append(apply_rope(_heads(parts.q_proj(hp), hd), cp, sp))
        store.k[:, :, :P] = apply_rope(_heads(parts.k_proj(hp), hd), cp, sp)
        store.v[:, :, :P] = _heads(parts.v_proj(hp), hd)

    hr = parts.attn_norm(x[:, P:])  # (batch, R, d_model)
    sel = None  # None = all response tokens
    if refresh_response:
        cr, sr = cos[:, P:], sin[:, P:]
        queries.append(apply_rope(_heads(parts.q_proj(hr), hd), cr, sr))
        store.k[:, :, P:] = apply_rope(_heads(parts.k_proj(hr), hd), cr, sr)
        store.v[:, :, P:] = _heads(parts.v_proj(hr), hd)
    else:
        v_new = _heads(parts.v_proj(hr), hd)  # (batch, kv_heads, R, hd): needed for the drift test
        sel = select_drifted(v_new, store.v[:, :, P:], ctx.transfer_ratio)  # (batch, k)
        store.v[:, :, P:] = v_new  # computed anyway: every response V is refreshed
        if sel.shape[1]:
            hs = _gather_tokens(hr, sel)
            cs, ss = _gather_tokens(cos[:, P:], sel), _gather_tokens(sin[:, P:], sel)
            queries.append(apply_rope(_heads(parts.q_proj(hs), hd), cs, ss))
            _scatter_heads(store.k[:, :, P:], sel, apply_rope(_heads(parts.k_proj(hs), hd), cs, ss))

    n_prompt_q = P if plan.refresh_prompt else 0
    if queries:
        q = torch.cat(queries, dim=2) if len(queries) > 1 else queries[0]
        o = parts.out_proj(attend(q, store.k, store.v, ctx.key_mask))  # (batch, n_queries, d_model)
        if n_prompt_q:
            store.attn[:, :P] = o[:, :P]
        o_resp = o[:, n_prompt_q:]
        if sel is None:
            store.attn[:, P:] = o_resp
        elif sel.shape[1]:
            _scatter_tokens(store.attn[:, P:], sel, o_resp)

    if ctx.prompt_rows_dead:
        # Prompt rows are dead on this step: nothing below reads them and the LM head serves
        # their cached logits. Update only the response rows, in place on the block input.
        xr = x[:, P:]
        xr += store.attn[:, P:]
        if sel is None:
            store.ffn[:, P:] = parts.mlp(parts.ffn_norm(xr))
        elif sel.shape[1]:
            _scatter_tokens(store.ffn[:, P:], sel, parts.mlp(parts.ffn_norm(_gather_tokens(xr, sel))))
        xr += store.ffn[:, P:]
        return x

    x = x + store.attn  # cached deltas for every token not recomputed
    ffn_in = [x[:, :P]] if n_prompt_q else []
    if sel is None:
        ffn_in.append(x[:, P:])
    elif sel.shape[1]:
        ffn_in.append(_gather_tokens(x[:, P:], sel))
    if ffn_in:
        f = parts.mlp(parts.ffn_norm(torch.cat(ffn_in, dim=1) if len(ffn_in) > 1 else ffn_in[0]))
        store.ffn[:, :n_prompt_q] = f[:, :n_prompt_q]
        if sel is None:
            store.ffn[:, P:] = f[:, n_prompt_q:]
        elif sel.shape[1]:
            _scatter_tokens(store.ffn[:, P:], sel, f[:, n_prompt_q:])
    return x + store.ffn
