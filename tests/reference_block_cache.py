"""A plain reference of the block KV-cache policies ("block-prefix", "block-dual", Fast-dLLM's):
the oracle for their part of tests/test_oracle_cache.py.

Written from CacheConfig's docstring, not from the engine (no dllm_cache blockcache, schedule or
state code is called). Only K and V are cached:
- a *full* step runs the plain forward over every row and stores every row's K and V per layer. It
  happens when the decoded block changes (the rows whose logits the sampler asks for differ from
  the previous step's: a new semi-AR block, or the first step of the generation) and, with
  block_refresh=N, on the N-th step after the last full one (N = 1: every step);
- the other steps recompute one contiguous range of rows from the embeddings up: "block-dual" the
  asked rows (on a shifted model, Dream, also the row after them: the block's last token, whose own
  K/V the asked rows see), "block-prefix" the asked rows and everything after them. Per layer the
  range's K/V are written into the cache and its queries attend to every key (cached K/V outside
  the range); its rows add their fresh attention and FFN outputs. Rows outside the range are not
  computed at all (nothing reads them: the asked logits lie inside the range).
With block_start="incremental" a new block does not start with a full step: full steps come on
step 0 of the generation and every prompt_interval steps (None: step 0 only), counted from 0 over the
whole generation. A step whose asked rows differ from the previous step's (and that is not full)
recomputes, with the new block's range, the block decoded just before (its rows' K/V were last written
while some of its tokens were masks): the range runs from the previous asked rows' first row to the new
range's end. Everything else keeps the K/V of the last full step.
Facts read from the engine (schedule.block_region / plan_block_step, state._block_plan): the
"N-th step" counts the full step as 1; the Dream range's upper end is min(hi + 1, seq).
"""

from __future__ import annotations

import torch
from torch import nn

from dllm_cache import CacheConfig
from tests.reference_cache import PlainModel, StepRecord


class ReferenceBlockCache:
    """One generation of a block policy: call once per step with ids (batch, seq) and the asked rows
    [lo, hi); returns their logits (batch, hi - lo, vocab)."""

    def __init__(self, model: nn.Module, config: CacheConfig, prompt_len: int | None = None, block_length=None):
        if not config.is_block:
            raise ValueError("ReferenceBlockCache models policy='block-prefix' or 'block-dual', got 'feature'.")
        self.m = PlainModel(model)
        self.cfg = config
        self.asked: tuple[int, int] | None = None  # rows asked at the previous step
        self.step = 0  # steps of this generation so far
        self.since_full = 0  # steps since the last full step, counting that step as 1
        self.K: list[torch.Tensor] = []
        self.V: list[torch.Tensor] = []
        self.records: list[StepRecord] = []
        self.regions: list[tuple[int, int] | None] = []  # per step: the recomputed range, None on full steps

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
        seq = ids.shape[1]
        lo, hi = rows or (0, seq)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        keep = mask.bool()
        cos, sin = self.m.rope_tables(self.m.positions(mask))
        new_block = (lo, hi) != self.asked
        if self.cfg.block_start == "incremental":
            kp = self.cfg.prompt_interval
            full = self.step == 0 if kp is None else self.step % kp == 0
        else:
            every = self.cfg.block_refresh
            full = new_block or (every is not None and self.since_full >= every)
        a = lo
        if new_block and not full:  # incremental start: the block decoded just before comes too
            a = min(self.asked[0], lo)
        self.asked = (lo, hi)
        self.step += 1
        self.since_full = 1 if full else self.since_full + 1
        if full:
            a, z = 0, seq
        elif self.cfg.policy == "block-prefix":
            z = seq
        else:
            z = min(hi + self.m.shift, seq)
        self.regions.append(None if full else (a, z))
        self.records.append(StepRecord(refresh_prompt=full, refresh_response=full))

        x = self.m.embed(ids)[:, a:z]  # (batch, n, d): the recomputed rows only
        c, s = cos[:, a:z], sin[:, a:z]
        for i in range(len(self.m.layers)):
            q, k, v = self.m.qkv(i, x, c, s)
            if full:
                if len(self.K) <= i:
                    self.K.append(k)
                    self.V.append(v)
                self.K[i], self.V[i] = k.clone(), v.clone()
            else:
                self.K[i][:, :, a:z] = k
                self.V[i][:, :, a:z] = v
            x = x + self.m.attention(i, q, self.K[i], self.V[i], keep)
            x = x + self.m.ffn(i, x)
        return self.m.logits(x)[:, lo - a: hi - a]
