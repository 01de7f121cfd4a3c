"""Dream adapter: Qwen2-style `model.model.layers[i]` with self_attn.{q,k,v,o}_proj (biased q/k/v),
mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm; bidirectional attention."""

from __future__ import annotations

import torch
from torch import nn

from dllm_cache.models.layers import positions_from_mask

from .base import BlockParts, Dims, ModelAdapter, has_attrs


class DreamAdapter(ModelAdapter):
    family = "dream"
    logit_shift = 1
    sampler = "dream"

    def matches(self, model: nn.Module) -> bool:
        inner = getattr(model, "model", None)
        layers = None if inner is None else getattr(inner, "layers", None)
        if not layers:
            return False
        layer = layers[0]
        return (
            has_attrs(layer, ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))
            and has_attrs(layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj"))
            and "dream" in str(getattr(model.config, "model_type", "")).lower()
        )

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def parts(self, block: nn.Module) -> BlockParts:
        attn = block.self_attn
        return BlockParts(
            attn_norm=block.input_layernorm, q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj,
            out_proj=attn.o_proj, ffn_norm=block.post_attention_layernorm, mlp=block.mlp,
        )

    def dims(self, config) -> Dims:
        n_heads = config.num_attention_heads
        return Dims(
            n_heads=n_heads,
            n_kv_heads=config.num_key_value_heads or n_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            rope_theta=float(getattr(config, "rope_theta", None) or 10000.0),
        )

    def positions(self, attention_mask, batch: int, seq: int, device) -> torch.Tensor:
        # Dream's generation counts positions from the first real token under left padding.
        return positions_from_mask(attention_mask, batch, seq, device)

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "lm_head", None)

    def block_output(self, x: torch.Tensor):
        return (x,)
