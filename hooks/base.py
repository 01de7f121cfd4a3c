"""What the generic cached block forward needs from a model family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockParts:
    """One transformer block, seen through the operations the cache recomputes.

    attn_norm / ffn_norm: pre-norms; q_proj/k_proj/v_proj/out_proj: attention projections (batch,
    tokens, d_model) -> (batch, tokens, heads * head_dim), before RoPE (a family with per-head QK norms
    folds them into q_proj / k_proj); mlp: FFN applied to already-normalised input (batch, tokens,
    d_model), token by token (a mixture of experts routes each token on its own), so computing it for
    a subset of tokens gives those tokens' rows of the full result.
    """

    attn_norm: Callable[[torch.Tensor], torch.Tensor]
    q_proj: Callable[[torch.Tensor], torch.Tensor]
    k_proj: Callable[[torch.Tensor], torch.Tensor]
    v_proj: Callable[[torch.Tensor], torch.Tensor]
    out_proj: Callable[[torch.Tensor], torch.Tensor]
    ffn_norm: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Dims:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float


class ModelAdapter:
    """Base for one model family: how to find its blocks and read their parts (duck-typed)."""

    family: str = ""
    logit_shift: int = 0  # 1 when the logits at row i predict token i + 1 (Dream)
    sampler: str = "llada"  # which sampler of dllm_cache.sampling.generate decodes this family
    # False when a block's forward synchronises with the host (data-dependent shapes, e.g. expert
    # dispatch in a mixture of experts): cached steps then never try CUDA-graph capture or torch.compile.
    graph_capturable: bool = True

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def parts(self, block: nn.Module) -> BlockParts:
        raise NotImplementedError

    def dims(self, config) -> Dims:
        raise NotImplementedError

    def positions(self, attention_mask: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
        raise NotImplementedError

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        """The module mapping final hidden states to logits, if it is a separate module."""
        return None

    def block_output(self, x: torch.Tensor):
        """Wrap a block's new hidden states in the return format its caller expects."""
        raise NotImplementedError


def has_attrs(obj, names: tuple[str, ...]) -> bool:
    return all(getattr(obj, n, None) is not None for n in names)
