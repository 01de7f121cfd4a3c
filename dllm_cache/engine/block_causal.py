"""The cache of a block-diffusion model (LLaDA 2.x): exact K/V of committed blocks, and the feature cache
inside the block being decoded.

Block diffusion decodes blocks of `block_length` columns in order (aligned at column 0 of the sequence), and
its attention is causal across blocks: a block's rows see their own block and the blocks before it. Once a
block is decoded its tokens never change, so its K and V at every layer are final: they are computed once
(`commit`, the block's rows against the stored prefix, block-causal among themselves, in the same pass as
the next block's first step) and every later step computes only the current block's rows against them. No
approximation: this alone gives the uncached model's logits ("exact block cache": CacheConfig(policy=
"block-prefix" or "block-dual"), or the feature policy with response_interval=1).

Inside the current block, across its steps, the feature cache (CacheConfig(policy="feature")) reuses the
block rows' attention and FFN outputs: every `response_interval` steps of a block (its first step always)
all its rows are recomputed; on the other steps layer 0 recomputes all rows and deeper layers recompute
int(block_length * transfer_ratio) rows per row of the batch, chosen by V-verify (the rows whose Value
vectors drifted most); with selection="frontier" (the default) first the still-masked rows (the only ones
whose logits the sampler reads), then those whose token changed since the block's last refresh (newly
decoded or edited tokens: their features are stale at every layer). On tiny random models this keeps 74% of
the exact cache's top-1 predictions at the default budget, against 51% for the changed rows first and 57%
for V-verify alone (eval/results/llada2_deviation.md). This is the
engine's cached layer (engine/layer.response_rows_forward) with the committed prefix as its "prompt"
(never refreshed: it is exact) and the block as its "response".

The model's own forward is not patched: the LLaDA 2.x sampler (dllm_cache.sampling.llada2) asks this object
for the current block's logits. `prompt_interval`, `cuda_graphs` and `compile` do not apply (the prefix is
exact; expert dispatch syncs with the host); `kv_cache_dtype` and `response_drift_threshold` are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dllm_cache.hooks.base import BlockParts, Dims, ModelAdapter
from dllm_cache.models.rope import apply_rope, rope_cos_sin

from ..analysis.flops import ModelDims
from ..analysis.memory import check_block_causal_fits
from ..config import CacheConfig
from .kv_store import ExactKV
from .layer import response_rows_forward
from .schedule import StepPlan
from .state import LayerStore, Stats, StepContext


def check_block_causal_config(config: CacheConfig) -> None:
    """What the block-causal cache cannot honour is an error naming the field (the rest does not apply)."""
    problems = []
    if config.kv_cache_dtype is not None:
        problems.append(f"kv_cache_dtype={config.kv_cache_dtype!r} (only None: K/V in the model's dtype)")
    if config.response_drift_threshold is not None:
        problems.append(f"response_drift_threshold={config.response_drift_threshold!r} (only None: a fixed response_interval)")
    if problems:
        raise ValueError("dllm-cache on a block-diffusion model (LLaDA 2.x): unsupported " + "; ".join(problems) + ".")


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return rearrange(t, "b t (h d) -> b h t d", d=head_dim)


def commit_rows_forward(parts: BlockParts, dims: Dims, kv: ExactKV, x: torch.Tensor, lo: int, hi: int,
                        rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                        deltas: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One layer over rows [lo, hi) (blocks to commit, possibly followed by the block being decoded): their K/V
    are written into kv (batch, kv_heads, >= hi, hd) at [lo, hi); their queries attend to kv[:, :, :hi] under
    `mask` (batch or 1, 1, hi - lo, hi) bool. deltas: (attn, ffn) stores (batch, B, d_model) that receive the
    last B rows' attention and FFN outputs (the decoded block's, for the feature cache's later steps).
    x (batch, hi - lo, d_model) -> layer output of the same shape."""
    cos, sin = rope[0][:, lo:hi], rope[1][:, lo:hi]
    h = parts.attn_norm(x)
    q = apply_rope(_heads(parts.q_proj(h), dims.head_dim), cos, sin)
    kv.k[:, :, lo:hi] = apply_rope(_heads(parts.k_proj(h), dims.head_dim), cos, sin)
    kv.v[:, :, lo:hi] = _heads(parts.v_proj(h), dims.head_dim)
    k, v = kv.k[:, :, :hi], kv.v[:, :, :hi]
    group = dims.n_heads // dims.n_kv_heads
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    attn = parts.out_proj(rearrange(o, "b h t d -> b t (h d)"))
    x = x + attn
    ffn = parts.mlp(parts.ffn_norm(x))
    if deltas is not None:
        B = deltas[0].shape[1]
        deltas[0].copy_(attn[:, -B:])
        deltas[1].copy_(ffn[:, -B:])
    return x + ffn


class BlockCausalCache:
    """One generation of a block-diffusion model: K/V of committed columns, and the current block's features.

    ids passed to `block_logits` are the whole sequence (batch, total) as the sampler holds it; positions
    (batch, total) and key_mask (batch, total) bool (None: nothing padded) are fixed for the generation;
    prompt_len the prompt's columns (padding included; None: every column but the last block, the most a first
    pass can cover), for the memory check. Before allocating, `check_block_causal_fits` raises
    NotEnoughMemoryError (naming the largest batch that fits) when the cache and a step cannot fit on the
    model's device, as the feature cache's step 0 does (`check_generation_fits`).
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, config: CacheConfig, *, batch: int, total: int,
                 block_length: int, positions: torch.Tensor, key_mask: torch.Tensor | None, stats: Stats | None = None,
                 mask_id: int | None = None, prompt_len: int | None = None):
        check_block_causal_config(config)
        self.model, self.adapter, self.config = model, adapter, config
        self.blocks = adapter.blocks(model)
        self.parts = [adapter.parts(b) for b in self.blocks]
        self.dims = adapter.dims(model.config)
        self.embed, self.norm, self.head = adapter.embeddings(model), adapter.final_norm(model), adapter.lm_head(model)
        param = next(model.parameters())
        dtype, device = param.dtype, param.device
        try:
            cost_dims = ModelDims.from_config(model.config)
        except (ValueError, TypeError, AttributeError):
            cost_dims = None  # a config the estimate cannot read: no check (as check_generation_fits)
        if cost_dims is not None:
            P = max(total - block_length, 0) if prompt_len is None else prompt_len
            check_block_causal_fits(cost_dims, batch, P, total - P, block_length, device, param.element_size())
        hd, kvh = self.dims.head_dim, self.dims.n_kv_heads
        self.kv = [ExactKV.empty((batch, kvh, total, hd), dtype, device) for _ in self.blocks]
        d_model = self.embed.embedding_dim
        self.deltas = [(torch.zeros(batch, block_length, d_model, dtype=dtype, device=device),
                        torch.zeros(batch, block_length, d_model, dtype=dtype, device=device)) for _ in self.blocks]
        self.rope = rope_cos_sin(positions, adapter.rotary_dim(model.config), self.dims.rope_theta)  # (batch, total, rot)
        self.key_mask = key_mask
        self.block_length, self.total = block_length, total
        self.committed = 0  # columns [0, committed) hold final K/V
        self.feature = not config.is_block and not (config.response_interval == 1)
        self.counts = config.layer_counts(block_length, len(self.blocks), block_length)
        self.block_start: int | None = None  # the block whose features are held, and its step count
        self.block_step = 0
        self.refresh_tokens: torch.Tensor | None = None  # (batch, B) the block's tokens at its last refresh
        self.mask_id = mask_id if mask_id is not None else getattr(model.config, "mask_token_id", None)
        self.stats = stats
        if stats is not None:
            stats.generations += 1

    # ------------------------------------------------------------------ committed blocks
    def _mask(self, lo: int, hi: int) -> torch.Tensor:
        """(batch or 1, 1, hi - lo, hi) bool: block-causal among rows [lo, hi), every earlier key visible,
        padded keys dropped (a query always keeps itself, so a block of padding attends to something)."""
        q_block = torch.arange(lo, hi, device=self.rope[0].device) // self.block_length
        k_block = torch.arange(hi, device=q_block.device) // self.block_length
        allowed = (k_block[None, :] <= q_block[:, None])[None, None]
        if self.key_mask is not None:
            diag = torch.zeros(hi - lo, hi, dtype=torch.bool, device=q_block.device)
            diag[:, lo:hi] = torch.eye(hi - lo, dtype=torch.bool, device=q_block.device)
            allowed = (allowed & self.key_mask[:, None, None, :hi]) | diag
        return allowed

    @torch.no_grad()
    def commit(self, ids: torch.Tensor, hi: int, block: bool = False) -> torch.Tensor | None:
        """Store final K/V for columns [committed, hi) (whole blocks: the prompt's, then each decoded one).

        block=True: the last block_length columns are the block being decoded, computed in the same pass
        (block-causal masking gives them exactly the attention they have alone); their K/V and features are
        stored as a refresh step's, the committed frontier stops before them, and their final hidden states
        (batch, B, d_model) are returned."""
        lo = self.committed
        if hi <= lo:
            return None
        x = self.embed(ids[:, lo:hi])
        mask = self._mask(lo, hi)
        for parts, kv, deltas in zip(self.parts, self.kv, self.deltas):
            x = commit_rows_forward(parts, self.dims, kv, x, lo, hi, self.rope, mask, deltas if block else None)
        self.committed = hi - self.block_length if block else hi
        return x[:, -self.block_length:] if block else None

    # ------------------------------------------------------------------ the current block
    def _plan(self, lo: int, block_ids: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """(refresh every row?, frontier priority (batch, B) or None) for this step of the block at `lo`."""
        if self.block_start != lo:
            self.block_start, self.block_step = lo, 0
        refresh = not self.feature or self.block_step % self.config.response_interval == 0
        self.block_step += 1
        priority = None
        if refresh:
            self.refresh_tokens = block_ids.clone()
        elif self.config.selection == "frontier":
            # The still-masked rows first (the sampler reads their logits), then the rows whose token changed since
            # the refresh (their features, K and V are stale at every layer), then the rest by V-verify.
            masked = (block_ids == self.mask_id).to(torch.int8)
            priority = 2 * masked + (block_ids != self.refresh_tokens).to(torch.int8)
        return refresh, priority

    @torch.no_grad()
    def block_logits(self, ids: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Logits (batch, hi - lo, vocab) of the block [lo, hi) given the sequence ids (batch, total):
        earlier blocks are committed first (exact K/V), then the block's rows are computed against them."""
        if lo % self.block_length or hi - lo != self.block_length:
            raise ValueError(f"block_logits: [{lo}, {hi}) is not one block of {self.block_length} aligned at column 0.")
        if lo < self.committed:
            raise ValueError(f"block_logits: block [{lo}, {hi}) is already committed (columns < {self.committed}); "
                             "blocks are decoded in order.")
        block_ids = ids[:, lo:hi]
        refresh, priority = self._plan(lo, block_ids)
        if lo > self.committed:
            if refresh:  # a block's first step: commit the blocks before it and compute it, in one pass
                x = self.commit(ids, hi, block=True)
                self._count(True, x.shape[0])
                return self.head(self.norm(x))
            self.commit(ids, lo)
        plan = StepPlan(refresh_prompt=False, refresh_response=refresh)
        rope = (self.rope[0][:, :hi], self.rope[1][:, :hi])
        key_mask = None if self.key_mask is None else self.key_mask[:, :hi]
        ctx = StepContext(plan=plan, prompt_len=lo, rope=rope, key_mask=key_mask, selected=self.counts[-1],
                          head_cached=True, priority=priority, logit_rows=(lo, hi),
                          layer_selected=self.counts if self.config.layer_ratios is not None else None)
        x = self.embed(block_ids)  # (batch, B, d_model), updated in place layer by layer
        for i, (parts, kv, (attn, ffn)) in enumerate(zip(self.parts, self.kv, self.deltas)):
            store = LayerStore(kv=ExactKV(kv.k[:, :, :hi], kv.v[:, :, :hi]), attn=attn, ffn=ffn)
            response_rows_forward(parts, self.dims, store, ctx.for_layer(i), x, i == 0)
        self._count(refresh, x.shape[0])
        return self.head(self.norm(x))

    def _count(self, refresh: bool, batch: int) -> None:
        if self.stats is None:
            return
        s, B, n = self.stats, self.block_length, len(self.blocks)
        s.steps += 1
        s.block_steps += 1
        if refresh:
            s.response_refresh_steps += 1
            s.tokens_recomputed += batch * B * n
        else:
            s.partial_steps += 1
            s.tokens_recomputed += batch * (B + sum(min(k, B) for k in self.counts[1:]))
        s.tokens_total += batch * B * n

