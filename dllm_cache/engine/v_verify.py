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


def select_drifted(v_new: torch.Tensor, v_old: torch.Tensor, k: int, priority: torch.Tensor | None = None,
                   sim: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (batch, k) into the response tokens, lowest similarity first picked, sorted ascending.

    priority: (batch, R) integer levels (or bool) or None. Higher levels are picked first, the most
    drifted first within a level: cosine similarity lies in [-1, 1], so lowering it by 3 per level
    puts every token of a level below every token of the levels under it, keeping their order.
    Sorted so gathers and scatters walk memory in order; each row picks its own tokens.
    sim: their `value_similarity`, when the caller has it already (the drift-triggered refresh).
    """
    sim = value_similarity(v_new, v_old) if sim is None else sim
    if priority is not None:
        sim = sim - 3.0 * priority
    idx = sim.topk(k, dim=-1, largest=False).indices
    return idx.sort(dim=-1).values
