"""Small building blocks shared by the LLaDA and Dream implementations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm computed in float32 then cast back, as both official models do."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The `_init_weights` of every family here (transformers calls it on each module of a fresh model):
    linear and embedding weights ~ N(0, std) with zero biases, RMS norms at one."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Bidirectional attention.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim);
    key_mask: (batch, k_len) bool, True = attend, or None. Returns (batch, q_len, heads * head_dim).
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]
    gqa = {}
    if q.shape[1] != k.shape[1]:  # a Python branch: traceable with symbolic shapes
        if mask is None:
            gqa = {"enable_gqa": True}  # FlashAttention groups the heads itself
        else:
            # With a mask SDPA has no grouped-head kernel but its memory-efficient one (the math
            # fallback would build (batch, heads, q, k) scores): give every query head its K/V.
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
    batch, heads, q_len, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


def positions_from_mask(attention_mask: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
    """Token positions (batch, seq): 0..seq-1, or counted from the first real token under left padding."""
    if attention_mask is None:
        return torch.arange(seq, device=device).expand(batch, seq)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def key_mask_from(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean key mask. No host sync here (forwards must be CUDA-graph capturable): callers
    with unpadded batches pass None, which lets SDPA take its fastest kernels."""
    return None if attention_mask is None else attention_mask.bool()


def embed_inputs(
    embedding: nn.Embedding, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
) -> torch.Tensor:
    """The first layer's input (batch, seq, hidden): token ids looked up, or embeddings given by the
    caller (a multimodal prompt such as LLaDA-V's, where image features stand in for tokens)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(
            "Pass exactly one of input_ids (batch, seq) or inputs_embeds (batch, seq, hidden); "
            f"got input_ids={'set' if input_ids is not None else 'None'}, "
            f"inputs_embeds={'set' if inputs_embeds is not None else 'None'}."
        )
    if inputs_embeds is None:
        return embedding(input_ids)
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embedding.embedding_dim:
        raise ValueError(
            f"inputs_embeds must have shape (batch, seq, {embedding.embedding_dim}), got {tuple(inputs_embeds.shape)}."
        )
    return inputs_embeds
