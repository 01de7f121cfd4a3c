"""One adapter per model family, picked by duck-typing the model's attribute names.

Installed as `dllm_cache.hooks`.
"""

from __future__ import annotations

from torch import nn

from .base import BlockParts, Dims, ModelAdapter
from .dream import DreamAdapter
from .llada import LLaDAAdapter
from .llada2 import LLaDA2Adapter
from .llada_moe import LLaDAMoEAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (LLaDAAdapter(), DreamAdapter(), LLaDAMoEAdapter(), LLaDA2Adapter())

SUPPORTED = (
    "llada (LLaDA, LLaDA-1.5, MMaDA, LLaDA-V's language model: model.model.transformer.blocks[i] with attn_norm, "
    "q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out)",
    "dream (Dream, Dream-Coder, DreamOn: config.model_type 'Dream', model.model.layers[i] with "
    "self_attn.{q,k,v,o}_proj, mlp, input_layernorm, post_attention_layernorm)",
    "llada_moe (LLaDA-MoE: model.model.layers[i] with self_attn.{q,k,v,o}_proj and {q,k}_norm, a routed mlp, "
    "config.num_experts and config.expert_intermediate_size)",
    "llada2_moe (LLaDA 2.0 / 2.1, block diffusion: model.model.layers[i] with attention.query_key_value, "
    "attention.dense, optional query_layernorm / key_layernorm, mlp, input_layernorm, post_attention_layernorm; "
    "model.model.word_embeddings)",
)

# Known diffusion LMs the cache cannot serve, with what it would need: (model_type, class-name prefix, reason).
# (LLaDA 2.x, "llada2_moe", was here until session 8: it is served by hooks/llada2.py + engine/block_causal.py.)
UNSUPPORTED: tuple[tuple[str, str, str], ...] = ()


def _unsupported_reason(model: nn.Module) -> str | None:
    model_type = str(getattr(getattr(model, "config", None), "model_type", "")).lower()
    name = type(model).__name__
    for known_type, class_prefix, reason in UNSUPPORTED:
        if model_type == known_type or name.startswith(class_prefix):
            return reason
    return None


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter whose attribute layout the model has; ValueError naming the supported ones."""
    reason = _unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"dllm-cache cannot cache {type(model).__name__}: {reason}")
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    raise ValueError(
        f"dllm-cache does not know how to cache {type(model).__name__}. Supported families: {'; '.join(SUPPORTED)}. "
        "Load them through transformers (after `import dllm_cache`) or their official remote code."
    )


def family_of(model: nn.Module) -> str:
    return adapter_for(model).family


def sampler_of(model: nn.Module) -> str:
    """"llada", "dream" or "llada2": the sampler that decodes the model's family (LLaDA-MoE, MMaDA: LLaDA's;
    LLaDA 2.x: block diffusion, dllm_cache.sampling.llada2)."""
    return adapter_for(model).sampler


__all__ = ["ADAPTERS", "BlockParts", "Dims", "ModelAdapter", "adapter_for", "family_of", "sampler_of"]
