"""LLaDA-MoE adapter: `model.model.layers[i]` with self_attn.{q,k,v,o}_proj and per-head
self_attn.{q,k}_norm, input_layernorm, post_attention_layernorm, a routed `mlp` (gate + experts) or a
dense one, and an optional `shared_expert`; bidirectional, positions 0..seq-1, logits not shifted.
Works on our LLaDAMoEModelLM and on the official remote-code class (inclusionAI/LLaDA-MoE-7B-A1B,
`modeling_lladamoe.py`), whose module names these are.

The routed FFN is applied to whatever tokens the cache hands it; routing is per token, so the
selected tokens get exactly the experts (and weights) they would get in a full forward.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from torch import nn

from .base import BlockParts, Dims, ModelAdapter, has_attrs

ATTN_ATTRS = ("q_proj", "k_proj", "v_proj", "o_proj")
LAYER_ATTRS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


def _normed_heads(proj: nn.Module, norm: nn.Module, head_dim: int, h: torch.Tensor) -> torch.Tensor:
    """Projection followed by an RMSNorm over each head's head_dim, as the official attention does
    before RoPE: (batch, tokens, d_model) -> (batch, tokens, heads * head_dim)."""
    y = rearrange(proj(h), "b t (h d) -> b t h d", d=head_dim)
    return rearrange(norm(y), "b t h d -> b t (h d)")


def _ffn(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Routed (or dense) FFN plus the shared expert, if the layer has one, on normalised tokens."""
    out = layer.mlp(h)
    shared = getattr(layer, "shared_expert", None)
    return out if shared is None else out + shared(h)


class LLaDAMoEAdapter(ModelAdapter):
    family = "llada_moe"
    graph_capturable = False  # expert dispatch picks tokens per expert with torch.where (host sync)

    def matches(self, model: nn.Module) -> bool:
        inner = getattr(model, "model", None)
        layers = None if inner is None else getattr(inner, "layers", None)
        config = getattr(model, "config", None)
        if not layers or config is None:
            return False
        layer = layers[0]
        return (
            has_attrs(layer, LAYER_ATTRS)
            and has_attrs(layer.self_attn, ATTN_ATTRS)
            and getattr(config, "num_experts", None) is not None
            and getattr(config, "expert_intermediate_size", None) is not None
        )

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def parts(self, block: nn.Module) -> BlockParts:
        attn = block.self_attn
        q_proj, k_proj = attn.q_proj, attn.k_proj
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        if (q_norm is None) != (k_norm is None):
            raise ValueError("LLaDA-MoE attention with only one of q_norm / k_norm is not supported.")
        if q_norm is not None:
            head_dim = q_norm.weight.shape[0]
            q_proj = partial(_normed_heads, attn.q_proj, q_norm, head_dim)
            k_proj = partial(_normed_heads, attn.k_proj, k_norm, head_dim)
        return BlockParts(
            attn_norm=block.input_layernorm, q_proj=q_proj, k_proj=k_proj, v_proj=attn.v_proj,
            out_proj=attn.o_proj, ffn_norm=block.post_attention_layernorm, mlp=partial(_ffn, block),
        )

    def dims(self, config) -> Dims:
        n_heads = config.num_attention_heads
        head_dim = config.hidden_size // n_heads
        unsupported = []
        if getattr(config, "clip_qkv", None) is not None:
            unsupported.append(f"clip_qkv={config.clip_qkv}")
        rope = getattr(config, "rope_scaling", None)  # transformers 5 may alias it to rope_parameters
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) != "default":
            unsupported.append(f"rope_scaling={rope}")
        factor = getattr(config, "partial_rotary_factor", 1.0)
        if factor is not None and int(head_dim * factor) != head_dim:
            unsupported.append(f"partial_rotary_factor={factor}")
        if unsupported:
            raise ValueError(f"dllm-cache cannot cache this LLaDA-MoE config: {', '.join(unsupported)} "
                             "(the cached layer applies plain RoPE over whole heads, no QKV clipping).")
        return Dims(
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            head_dim=head_dim,
            rope_theta=float(getattr(config, "rope_theta", None) or (rope or {})["rope_theta"]),
        )

    def positions(self, attention_mask, batch: int, seq: int, device) -> torch.Tensor:
        # The official model numbers positions 0..seq-1 regardless of padding (cache_position).
        return torch.arange(seq, device=device).expand(batch, seq)

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "lm_head", None)

    def block_output(self, x: torch.Tensor):
        return (x,)
