"""V-verify: pick the response tokens whose Value vectors drifted most since they were cached."""

from __future__ import annotations

import torch


def value_similarity(v_new: torch.Tensor, v_old: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token over all heads.

    v_new, v_old: (batch, kv_heads, tokens, head_dim) -> (batch, tokens), in float32.
    """
    a, b = v_new.float(), v_old.float()
    dot = (a * b).sum(dim=(1, 3))
    norms = a.pow(2).sum(dim=(1, 3)).sqrt() * b.pow(2).sum(dim=(1, 3)).sqrt()
    return dot / norms.clamp_min(1e-8)


def num_selected(num_response: int, transfer_ratio: float) -> int:
    """int(R * ratio), as the paper's implementation counts."""
    return int(num_response * transfer_ratio)


def select_drifted(v_new: torch.Tensor, v_old: torch.Tensor, transfer_ratio: float) -> torch.Tensor:
    """Indices (batch, k) into the response tokens, lowest similarity first picked, sorted ascending.

    Sorted so gathers and scatters walk memory in order; each row picks its own tokens.
    """
    k = num_selected(v_new.shape[2], transfer_ratio)
    sim = value_similarity(v_new, v_old)
    idx = sim.topk(k, dim=-1, largest=False).indices
    return idx.sort(dim=-1).values
