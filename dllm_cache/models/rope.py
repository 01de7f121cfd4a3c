"""Rotary position embedding shared by both model families and by the cached layer.

One implementation on purpose: the cached block forward re-applies RoPE to a subset of
tokens, and only bit-identical cos/sin tables make the cached path reproduce the
uncached logits exactly.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables in float32 for integer `positions` (batch, seq) -> (batch, seq, head_dim)."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)  # (head_dim / 2,)
    freqs = positions.float()[..., None] * inv_freq  # (batch, seq, head_dim / 2)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (batch, heads, seq, head_dim) by tables (batch, seq, rotary_dim); math in float32.

    Half-split rotation (first half pairs with second half), as LLaDA and Qwen2/Dream do. Tables
    narrower than the head (partial RoPE, LLaDA 2.x: rotary_dim = head_dim * partial_rotary_factor)
    rotate the leading rotary_dim dims and pass the rest through.
    """
    if cos.shape[-1] != x.shape[-1]:
        rot = cos.shape[-1]
        return torch.cat((apply_rope(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    out = xf * cos[:, None] + rotated * sin[:, None]
    return out.to(x.dtype)
