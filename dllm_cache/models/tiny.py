"""Model factories: tiny random models for tests, and the real 8B/7B shapes for benchmarks."""

from __future__ import annotations

from typing import TypeVar

import torch

from .dream import DreamConfig, DreamModel
from .llada import LLaDAConfig, LLaDAModelLM
from .llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM
from .llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM
from .mmada import MMadaConfig, MMadaModelLM

TINY_VOCAB = 256


def tiny_llada_config(**overrides) -> LLaDAConfig:
    kw = dict(
        d_model=64, n_heads=4, n_kv_heads=4, n_layers=3, mlp_hidden_size=160,
        vocab_size=TINY_VOCAB, embedding_size=TINY_VOCAB, max_sequence_length=512,
        rope_theta=10000.0, mask_token_id=TINY_VOCAB - 1, pad_token_id=TINY_VOCAB - 2,
        eos_token_id=TINY_VOCAB - 2,
    )
    kw.update(overrides)
    return LLaDAConfig(**kw)


def tiny_dream_config(**overrides) -> DreamConfig:
    kw = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10000.0, mask_token_id=TINY_VOCAB - 1, pad_token_id=TINY_VOCAB - 2,
        eos_token_id=TINY_VOCAB - 2, bos_token_id=TINY_VOCAB - 3,
    )
    kw.update(overrides)
    return DreamConfig(**kw)


def tiny_llada_moe_config(**overrides) -> LLaDAMoEConfig:
    """Every LLaDA-MoE feature at once: a dense first layer, routed layers with a shared expert, expert
    bias, per-head QK norms, attention biases and grouped KV heads."""
    kw = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, dense_intermediate_size=160, expert_intermediate_size=48,
        shared_expert_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rope_theta=10000.0, num_experts=6, num_experts_per_tok=2,
        qk_layernorm=True, attention_bias=True, moe_layer_freq=[0, 1, 1], moe_router_enable_expert_bias=True,
        mask_token_id=TINY_VOCAB - 1, pad_token_id=TINY_VOCAB - 2, eos_token_id=TINY_VOCAB - 2,
    )
    kw.update(overrides)
    return LLaDAMoEConfig(**kw)


def tiny_llada2_config(**overrides) -> LLaDA2MoeConfig:
    """LLaDA 2.x features at once: a dense first layer, then group-routed MoE layers with shared experts and
    an expert bias, per-head QK norms, a QKV bias, grouped KV heads, partial RoPE (half of each head)."""
    kw = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=160, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_theta=10000.0,
        partial_rotary_factor=0.5, num_experts=8, num_shared_experts=1, num_experts_per_tok=2, n_group=4,
        topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1, use_qkv_bias=True, use_qk_norm=True,
        mask_token_id=TINY_VOCAB - 1, pad_token_id=TINY_VOCAB - 2, eos_token_id=TINY_VOCAB - 2,
    )
    kw.update(overrides)
    return LLaDA2MoeConfig(**kw)


def tiny_mmada_config(**overrides) -> MMadaConfig:
    """A joint vocabulary: 208 text tokens (mask = the last of them) followed by 48 image VQ codes."""
    kw = dict(
        d_model=64, n_heads=4, n_kv_heads=4, n_layers=3, mlp_hidden_size=160, vocab_size=TINY_VOCAB,
        embedding_size=TINY_VOCAB, max_sequence_length=512, rope_theta=10000.0, llm_vocab_size=208,
        codebook_size=48, num_vq_tokens=16, num_new_special_tokens=0, new_vocab_size=TINY_VOCAB,
        mask_token_id=207, pad_token_id=206, eos_token_id=206,
    )
    kw.update(overrides)
    return MMadaConfig(**kw)


def _seeded(model_cls, config, seed: int, std: float):
    torch.manual_seed(seed)
    model = model_cls(config)
    # Larger-than-default weights so the tiny model's logits are not flat: tests then
    # see real differences between tokens, and equality checks cannot pass by accident.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.normal_(0.0, std)
    return model.eval()


def tiny_llada(seed: int = 0, std: float = 0.15, **overrides) -> LLaDAModelLM:
    return _seeded(LLaDAModelLM, tiny_llada_config(**overrides), seed, std)


def tiny_dream(seed: int = 0, std: float = 0.15, **overrides) -> DreamModel:
    return _seeded(DreamModel, tiny_dream_config(**overrides), seed, std)


_M = TypeVar("_M", bound=torch.nn.Module)


def _with_expert_bias(model: _M) -> _M:
    """A nonzero expert bias (MoE routers), so routing depends on it as in a trained checkpoint."""
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("expert_bias"):
                buf.normal_(0.0, 0.05)
    return model


def tiny_llada_moe(seed: int = 0, std: float = 0.15, **overrides) -> LLaDAMoEModelLM:
    return _with_expert_bias(_seeded(LLaDAMoEModelLM, tiny_llada_moe_config(**overrides), seed, std))


def tiny_llada2(seed: int = 0, std: float = 0.15, **overrides) -> LLaDA2MoeModelLM:
    return _with_expert_bias(_seeded(LLaDA2MoeModelLM, tiny_llada2_config(**overrides), seed, std))


def tiny_mmada(seed: int = 0, std: float = 0.15, **overrides) -> MMadaModelLM:
    return _seeded(MMadaModelLM, tiny_mmada_config(**overrides), seed, std)


def llada_8b_config() -> LLaDAConfig:
    """LLaDA-8B-Instruct's shape (config.json of the official checkpoint)."""
    return LLaDAConfig(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
        vocab_size=126464, embedding_size=126464, max_sequence_length=4096, rope_theta=500000.0,
        rms_norm_eps=1e-5, mask_token_id=126336, pad_token_id=126081, eos_token_id=126081,
    )


def llada2_mini_config() -> LLaDA2MoeConfig:
    """LLaDA2.0-mini's / LLaDA2.1-mini's shape (config.json of the official checkpoints; 16B total, 1.4B active)."""
    return LLaDA2MoeConfig()


def dream_7b_config() -> DreamConfig:
    """Dream-v0-Instruct-7B's shape (Qwen2.5-7B backbone)."""
    return DreamConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0, rms_norm_eps=1e-6,
        mask_token_id=151666, pad_token_id=151643, eos_token_id=151643, bos_token_id=151643,
    )
