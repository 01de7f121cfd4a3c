"""One adapter per model family, picked by duck-typing the model's attribute names.

Installed as `dllm_cache.hooks`.
"""

from __future__ import annotations

from torch import nn

from .base import BlockParts, Dims, ModelAdapter
from .dream import DreamAdapter
from .llada import LLaDAAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (LLaDAAdapter(), DreamAdapter())


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter whose attribute layout the model has; ValueError naming the supported ones."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    supported = "; ".join(
        [
            "llada (model.model.transformer.blocks[i] with attn_norm, q_proj, k_proj, v_proj, attn_out, "
            "ff_norm, ff_proj, up_proj, ff_out)",
            "dream (config.model_type 'Dream', model.model.layers[i] with self_attn.{q,k,v,o}_proj, mlp, "
            "input_layernorm, post_attention_layernorm)",
        ]
    )
    raise ValueError(
        f"dllm-cache does not know how to cache {type(model).__name__}. Supported families: {supported}. "
        "Load LLaDA or Dream through transformers (after `import dllm_cache`) or their official remote code."
    )


def family_of(model: nn.Module) -> str:
    return adapter_for(model).family


__all__ = ["ADAPTERS", "BlockParts", "Dims", "ModelAdapter", "adapter_for", "family_of"]
