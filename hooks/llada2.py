"""LLaDA 2.x adapter (model_type "llada2_moe"): `model.model.layers[i]` with attention.query_key_value (fused
Q, K, V), attention.query_layernorm / key_layernorm, attention.dense, input_layernorm,
post_attention_layernorm and an `mlp` (dense, or routed experts + shared experts); `model.model.word_embeddings`,
`model.model.norm`, `lm_head`. Works on our LLaDA2MoeModelLM and on the official remote-code class, whose
module names these are (its MoE block returns (output, router logits): the adapter keeps the output).

Block diffusion: attention is causal across blocks, so the cache does not patch these blocks' forwards.
The LLaDA 2.x sampler (dllm_cache.sampling.llada2) runs the layers itself through these parts
(dllm_cache.engine.block_causal): committed blocks' K/V are kept exactly, and only the current block is
computed, optionally with the feature cache inside it.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import BlockParts, Dims, ModelAdapter, has_attrs

ATTN_ATTRS = ("query_key_value", "dense")
LAYER_ATTRS = ("attention", "mlp", "input_layernorm", "post_attention_layernorm")


class FusedQKV:
    """q_proj / k_proj / v_proj views of one fused projection (query heads, then key heads, then value heads),
    with its QK norms.

    Each input pays only for what its callers read, as split projections would (the FLOPs model counts
    LLaDA 2.x like any split-projection model): the refresh paths ask for Q, K and V of the same rows, so Q
    runs the whole fused matmul once and keeps K and V for the next two calls; a partial step asks for V
    alone on every block row (the drift test: the V rows of the weight and bias), then K and Q of the
    selected rows (K runs the Q and K rows, one matmul, and keeps Q). A kept projection is matched to its
    input by identity and dropped when read, so a long prompt's projections are not held between steps.
    A projection that is not a plain nn.Linear (quantised, adapter-wrapped) is run whole and sliced.
    Each call returns (batch, tokens, heads * head_dim), QK norms applied, RoPE not."""

    def __init__(self, attn: nn.Module, n_heads: int, n_kv_heads: int, head_dim: int):
        self.attn, self.n_heads, self.n_kv_heads, self.head_dim = attn, n_heads, n_kv_heads, head_dim
        self.q_norm = getattr(attn, "query_layernorm", None)
        self.k_norm = getattr(attn, "key_layernorm", None)
        self.sliceable = type(attn.query_key_value) is nn.Linear
        self._input: torch.Tensor | None = None  # the input the kept projections belong to
        self._kept: dict[int, torch.Tensor] = {}  # 0 Q, 1 K, 2 V -> (batch, tokens, heads * head_dim)

    def _project(self, h: torch.Tensor, first: int, last: int) -> list[torch.Tensor]:
        """Heads groups first..last (0 Q, 1 K, 2 V) of h (batch, tokens, d_model), each (batch, tokens, h * d)."""
        widths = [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim]
        lo, hi = sum(widths[:first]), sum(widths[:last + 1])
        lin = self.attn.query_key_value
        if self.sliceable:  # rows lo:hi of the weight are contiguous: no copy
            out = F.linear(h, lin.weight[lo:hi], None if lin.bias is None else lin.bias[lo:hi])
        else:
            out = lin(h)[..., lo:hi]
        parts = list(out.split(widths[first:last + 1], dim=-1))
        for i, which in enumerate(range(first, last + 1)):
            norm = (self.q_norm, self.k_norm, None)[which]
            if norm is not None:  # the QK norm acts per head
                heads = rearrange(parts[i], "b t (h d) -> b t h d", d=self.head_dim)
                parts[i] = rearrange(norm(heads), "b t h d -> b t (h d)")
        return parts

    def _get(self, h: torch.Tensor, which: int) -> torch.Tensor:
        if self._input is h and which in self._kept:
            out = self._kept.pop(which)
            if not self._kept:
                self._input = None
            return out
        # What a caller asks for first tells what follows: Q (refresh paths: then K, V), K (a partial step's
        # selected rows: then Q), V (a partial step's drift test: nothing more of these rows).
        first, last = {0: (0, 2), 1: (0, 1), 2: (2, 2)}[which]
        parts = self._project(h, first, last)
        out = parts[which - first]
        self._kept = {i: p for i, p in zip(range(first, last + 1), parts) if i != which}
        self._input = h if self._kept else None
        return out

    def q(self, h: torch.Tensor) -> torch.Tensor:
        return self._get(h, 0)

    def k(self, h: torch.Tensor) -> torch.Tensor:
        return self._get(h, 1)

    def v(self, h: torch.Tensor) -> torch.Tensor:
        return self._get(h, 2)


def _ffn(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Dense or routed FFN (+ shared experts, inside the official block) on normalised tokens."""
    out = layer.mlp(h)
    return out[0] if isinstance(out, tuple) else out  # the official MoE block also returns router logits


class LLaDA2Adapter(ModelAdapter):
    family = "llada2_moe"
    sampler = "llada2"
    graph_capturable = False  # expert dispatch picks tokens per expert (host sync)
    block_causal = True  # attention causal across blocks: the sampler drives the cache (engine/block_causal.py)

    def matches(self, model: nn.Module) -> bool:
        inner = getattr(model, "model", None)
        layers = None if inner is None else getattr(inner, "layers", None)
        if not layers or getattr(inner, "word_embeddings", None) is None:
            return False
        return has_attrs(layers[0], LAYER_ATTRS) and has_attrs(layers[0].attention, ATTN_ATTRS)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def parts(self, block: nn.Module, config=None) -> BlockParts:
        attn = block.attention
        n_heads = getattr(attn, "num_heads", None) or attn.n_heads
        n_kv = getattr(attn, "num_key_value_heads", None) or attn.n_kv_heads
        qkv = FusedQKV(attn, n_heads, n_kv, attn.head_dim)
        return BlockParts(
            attn_norm=block.input_layernorm, q_proj=qkv.q, k_proj=qkv.k, v_proj=qkv.v, out_proj=attn.dense,
            ffn_norm=block.post_attention_layernorm, mlp=partial(_ffn, block),
        )

    def dims(self, config) -> Dims:
        rope = getattr(config, "rope_scaling", None)
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"dllm-cache cannot cache this LLaDA 2.x config: rope_scaling={rope} (plain RoPE only).")
        n_heads = config.num_attention_heads
        return Dims(
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            rope_theta=float(getattr(config, "rope_theta", None) or (rope or {})["rope_theta"]),
        )

    def rotary_dim(self, config) -> int:
        """Leading dims of each head that RoPE rotates (partial_rotary_factor of head_dim)."""
        return int(self.dims(config).head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0))

    def positions(self, attention_mask, batch: int, seq: int, device) -> torch.Tensor:
        if attention_mask is None:
            return torch.arange(seq, device=device).expand(batch, seq)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return model.model.word_embeddings

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.model.norm

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "lm_head", None)

    def block_output(self, x: torch.Tensor):
        return (x,)
