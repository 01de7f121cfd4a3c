"""Fast-dLLM's block KV cache, as a policy of the same engine: CacheConfig(policy="block-prefix" |
"block-dual").

Semi-autoregressive decoding fills one block at a time. When a block starts (and every
`block_refresh` steps) a full forward stores every token's K and V (the "full" step). The block's
other steps recompute one contiguous range of rows (`schedule.block_region`): "block-dual" the
decoded block, "block-prefix" the block and everything after it. Their queries attend to every key:
fresh K/V for the recomputed rows, the K/V of the last refresh for all others. Nothing else is
reused (no attention or FFN outputs, no drift test), and nothing outside the range is computed:
its rows of the hidden states are dead, and the LM head reads only the rows asked for, which lie
inside the range.

The range is gathered through a persistent index (`StepContext.rows_index`), so under CUDA graphs
one captured step serves every block of the same size (every block of the dual cache).
"""

from __future__ import annotations

import torch

from dllm_cache.hooks.base import BlockParts, Dims
from dllm_cache.models.rope import apply_rope

from .layer import _attend_cached, _heads
from .state import LayerStore, StepContext


def block_rows_forward(parts: BlockParts, dims: Dims, store: LayerStore, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
    """One layer of a block step. x: (batch, seq, d_model) layer input, whose rows `ctx.rows_index`
    (n,) are updated in place (the others are not read); their K/V are written into the store."""
    idx = ctx.rows_index
    hd = dims.head_dim
    xr = x.index_select(1, idx)  # (batch, n, d_model)
    cos, sin = (t.index_select(1, idx) for t in ctx.rope)  # (batch, n, head_dim)
    h = parts.attn_norm(xr)
    q = apply_rope(_heads(parts.q_proj(h), hd), cos, sin)  # (batch, heads, n, hd)
    kv = store.kv
    kv.load()  # an fp8 store's K/V into the shared workspace: the rows outside idx are read as cached
    kv.write(0, k=apply_rope(_heads(parts.k_proj(h), hd), cos, sin), index=idx)
    kv.write(0, v=_heads(parts.v_proj(h), hd), index=idx)
    xr = xr + parts.out_proj(_attend_cached(q, kv.k, kv.v, ctx.key_mask))
    xr = xr + parts.mlp(parts.ffn_norm(xr))
    x.index_copy_(1, idx, xr)
    return x
