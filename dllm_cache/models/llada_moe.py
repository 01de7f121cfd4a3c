"""LLaDA-MoE (masked diffusion LM with a mixture-of-experts FFN) with the official checkpoint's names.

Facts from the public modeling/configuration files of inclusionAI/LLaDA-MoE-7B-A1B
(`modeling_lladamoe.py` / `configuration_lladamoe.py`, OLMoE-derived):
- config.json says model_type "llada" (the dense model's) with architectures ["LLaDAMoEModelLM"];
  `dllm_cache.models.LLaDAConfig.from_dict` routes such a dict here. mask_token_id is not in
  config.json; the model card samples with mask id 156895, our default.
- State dict: `model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj` (bias = attention_bias),
  `self_attn.{q,k}_norm` (RMSNorm over head_dim, per head, when qk_layernorm), `input_layernorm`,
  `post_attention_layernorm`; the FFN is `mlp.gate` (router, no bias) + `mlp.experts.{e}.{gate,up,down}_proj`
  (+ buffer `mlp.expert_bias` when moe_router_enable_expert_bias) on layers whose moe_layer_freq entry
  is nonzero, else a dense `mlp.{gate,up,down}_proj`; MoE layers add `shared_expert.{gate,up,down}_proj`
  when shared_expert_intermediate_size is set; then `model.norm`, `lm_head`.
- Routing is per token: softmax over the router logits in float32, (+ expert_bias), top-k, weights
  not renormalised (the official block hard-codes norm_topk_prob False), sum of weighted experts.
  So an FFN over any subset of tokens gives those tokens' rows of the FFN over all tokens: the cache
  recomputes the routed FFN only for the tokens it selects.
- Attention is bidirectional; positions are 0..seq-1 whatever the padding; logits are not shifted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .layers import RMSNorm, attend, embed_inputs, init_weights, key_mask_from
from .rope import apply_rope, rope_cos_sin


class LLaDAMoEConfig(PretrainedConfig):
    """Official config keys. Real checkpoints carry every key in config.json; the shape defaults are our
    reading of the published 7B-A1B description (RoPE base 50000, 8k context), not checked against it."""

    model_type = "llada"  # as the official config.json; told apart from dense LLaDA by its MoE keys

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        dense_intermediate_size: int = 8192,
        expert_intermediate_size: int = 1024,
        shared_expert_intermediate_size: int | None = None,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 50000.0,
        partial_rotary_factor: float = 1.0,
        rope_scaling: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        clip_qkv: float | None = None,
        num_experts: int = 64,
        num_experts_per_tok: int = 8,
        norm_topk_prob: bool | None = None,
        qk_layernorm: bool = True,
        moe_layer_freq: list[int] | None = None,
        moe_router_enable_expert_bias: bool | None = None,
        moe_router_score_function: str | None = None,
        routed_scaling_factor: float = 1,
        tie_word_embeddings: bool = False,
        mask_token_id: int = 156895,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.dense_intermediate_size = dense_intermediate_size
        self.expert_intermediate_size = expert_intermediate_size
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        if rope_scaling is not None:  # not stored: transformers 5 folds rope_scaling into rope_parameters
            raise ValueError(f"LLaDAMoEConfig: unsupported rope_scaling={rope_scaling!r} (only null: plain RoPE).")
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.clip_qkv = clip_qkv
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.norm_topk_prob = norm_topk_prob
        self.qk_layernorm = qk_layernorm
        self.moe_layer_freq = [1] * num_hidden_layers if moe_layer_freq is None else list(moe_layer_freq)
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.moe_router_score_function = moe_router_score_function
        self.routed_scaling_factor = routed_scaling_factor
        self.mask_token_id = mask_token_id
        kwargs.setdefault("architectures", ["LLaDAMoEModelLM"])
        super().__init__(
            vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs,
        )
        self.vocab_size = vocab_size
        self._validate()

    def _validate(self) -> None:
        """Refuse what this class (and the official one) would compute differently, naming the key."""
        problems = []
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r} (only 'silu')")
        if self.clip_qkv is not None:
            problems.append(f"clip_qkv={self.clip_qkv!r} (only null)")
        if int(self.head_dim * self.partial_rotary_factor) != self.head_dim:
            problems.append(f"partial_rotary_factor={self.partial_rotary_factor!r} (only 1.0: RoPE over the whole head)")
        if self.moe_router_score_function not in (None, "softmax"):
            problems.append(f"moe_router_score_function={self.moe_router_score_function!r} (only softmax)")
        if self.routed_scaling_factor not in (None, 1, 1.0):
            problems.append(f"routed_scaling_factor={self.routed_scaling_factor!r} (only 1)")
        if len(self.moe_layer_freq) != self.num_hidden_layers:
            problems.append(f"moe_layer_freq has {len(self.moe_layer_freq)} entries for {self.num_hidden_layers} layers")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            problems.append(f"num_experts_per_tok={self.num_experts_per_tok} with num_experts={self.num_experts}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"hidden_size={self.hidden_size}, num_attention_heads={self.num_attention_heads}, "
                            f"num_key_value_heads={self.num_key_value_heads} do not divide")
        if problems:
            raise ValueError("LLaDAMoEConfig: unsupported " + "; ".join(problems) + ".")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class LLaDAMoEMLP(nn.Module):
    """SwiGLU FFN: a dense layer's FFN, one expert, or the shared expert."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDAMoESparseMoeBlock(nn.Module):
    """Routed experts. Every token is routed on its own, so rows never depend on other rows."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            LLaDAMoEMLP(config.hidden_size, config.expert_intermediate_size) for _ in range(config.num_experts)
        )
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts))
        else:
            self.expert_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., hidden) -> (..., hidden)."""
        flat = x.reshape(-1, x.shape[-1])  # (tokens, hidden)
        probs = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)  # (tokens, experts)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (tokens, top_k)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):  # data-dependent dispatch (host syncs), as the official block
            token, slot = torch.where(chosen == e)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.reshape(x.shape)


class LLaDAMoEAttention(nn.Module):
    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(d, config.num_attention_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)
        if config.qk_layernorm:
            self.q_norm = RMSNorm(hd, config.rms_norm_eps)
            self.k_norm = RMSNorm(hd, config.rms_norm_eps)
        self.head_dim = hd

    def forward(self, h: torch.Tensor, rope, key_mask) -> torch.Tensor:
        cos, sin = rope
        q = rearrange(self.q_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.k_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        v = rearrange(self.v_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(attend(q, k, v, key_mask))


class LLaDAMoEDecoderLayer(nn.Module):
    """Returns a 1-tuple like the official layer."""

    def __init__(self, layer_idx: int, config: LLaDAMoEConfig):
        super().__init__()
        d = config.hidden_size
        moe = config.moe_layer_freq[layer_idx] != 0
        self.self_attn = LLaDAMoEAttention(config)
        self.mlp = LLaDAMoESparseMoeBlock(config) if moe else LLaDAMoEMLP(d, config.dense_intermediate_size)
        if moe and config.shared_expert_intermediate_size is not None:
            self.shared_expert = LLaDAMoEMLP(d, config.shared_expert_intermediate_size)
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        """FFN of already-normalised tokens (batch, tokens, hidden): routed experts (+ shared expert)."""
        out = self.mlp(h)
        if hasattr(self, "shared_expert"):
            out = out + self.shared_expert(h)
        return out

    def forward(self, x: torch.Tensor, rope, key_mask=None) -> tuple[torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask)
        x = x + self.ffn(self.post_attention_layernorm(x))
        return (x,)


class LLaDAMoEPreTrainedModel(PreTrainedModel):
    config_class = LLaDAMoEConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDAMoEDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)


class LLaDAMoEModel(nn.Module):
    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDAMoEDecoderLayer(i, config) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)  # (batch, seq, hidden)
        batch, seq = x.shape[:2]
        positions = torch.arange(seq, device=x.device).expand(batch, seq)  # the official model ignores padding here
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        key_mask = key_mask_from(attention_mask)
        for layer in self.layers:
            (x,) = layer(x, rope, key_mask)
        return self.norm(x)


class LLaDAMoEModelLM(LLaDAMoEPreTrainedModel):
    """Logits (batch, seq, vocab) over all positions (not shifted, as LLaDA)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__(config)
        self.model = LLaDAMoEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        logits = self.lm_head(self.model(input_ids, attention_mask, inputs_embeds))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)
