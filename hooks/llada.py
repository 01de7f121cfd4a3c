"""LLaDA adapter: `model.model.transformer.blocks[i]` with attn_norm, q/k/v_proj, attn_out,
ff_norm, ff_proj (gate), up_proj, ff_out. Works on our class and the official remote-code one."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .base import BlockParts, Dims, ModelAdapter, has_attrs

BLOCK_ATTRS = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")


def _swiglu(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return block.ff_out(block.act(block.ff_proj(h)) * block.up_proj(h))


class LLaDAAdapter(ModelAdapter):
    family = "llada"

    def _transformer(self, model: nn.Module):
        inner = getattr(model, "model", None)
        return getattr(inner, "transformer", None) if inner is not None else None

    def matches(self, model: nn.Module) -> bool:
        tr = self._transformer(model)
        blocks = None if tr is None else getattr(tr, "blocks", None)
        return bool(blocks) and has_attrs(blocks[0], BLOCK_ATTRS)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self._transformer(model).blocks

    def parts(self, block: nn.Module) -> BlockParts:
        for extra in ("q_norm", "k_norm"):
            if getattr(block, extra, None) is not None:
                raise ValueError(f"LLaDA blocks with {extra} (attention_layer_norm) are not supported by the cache yet.")
        return BlockParts(
            attn_norm=block.attn_norm, q_proj=block.q_proj, k_proj=block.k_proj, v_proj=block.v_proj,
            out_proj=block.attn_out, ffn_norm=block.ff_norm, mlp=partial(_swiglu, block),
        )

    def dims(self, config) -> Dims:
        n_heads = config.n_heads
        return Dims(
            n_heads=n_heads,
            n_kv_heads=getattr(config, "n_kv_heads", None) or n_heads,
            head_dim=config.d_model // n_heads,
            rope_theta=float(config.rope_theta),
        )

    def positions(self, attention_mask, batch: int, seq: int, device) -> torch.Tensor:
        # The official model numbers positions 0..seq-1 regardless of padding.
        return torch.arange(seq, device=device).expand(batch, seq)

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        tr = self._transformer(model)
        return tr["ff_out"] if "ff_out" in tr else None  # absent under weight tying

    def block_output(self, x: torch.Tensor):
        return x, None
