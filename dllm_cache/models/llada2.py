"""LLaDA 2.0 / 2.1 (model_type "llada2_moe", LLaDA2MoeModelLM) with the official checkpoint's names.

Facts read from the public modelling code (inclusionAI's `modeling_llada2_moe.py` as vendored by dInfer
and ZHZisZZ/dllm; the Ling / BailingMoE-v2 layout):
- State dict: `model.word_embeddings`, `model.layers.{i}.attention.query_key_value` (one fused projection:
  query heads, then key heads, then value heads, each head_dim wide; bias = use_qkv_bias),
  `attention.query_layernorm` / `key_layernorm` (RMSNorm over head_dim, per head, when use_qk_norm),
  `attention.dense` (bias = use_bias), `input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`.
- FFN: layers i < first_k_dense_replace are a dense SwiGLU `mlp.{gate,up,down}_proj` (intermediate_size);
  the others `mlp.gate` (router weight (experts, hidden), buffer `mlp.gate.expert_bias`),
  `mlp.experts.{e}.{gate,up,down}_proj` (moe_intermediate_size) and, when num_shared_experts is set,
  `mlp.shared_experts.{gate,up,down}_proj` (moe_intermediate_size * num_shared_experts).
- Routing, per token, in float32: scores = sigmoid(router logits); scores + expert_bias pick the experts,
  restricted to the topk_group best of n_group groups (a group scores the sum of its best two); the chosen
  experts' weights are the plain sigmoid scores, renormalised to sum 1 (top_k > 1), times
  routed_scaling_factor. Each token is routed on its own, so the FFN of any subset of tokens gives those
  tokens' rows of the FFN of all tokens (the cache recomputes the FFN for the tokens it selects).
- RoPE on the first int(head_dim * partial_rotary_factor) dims of each head (half-split rotation within
  them, frequencies over that width), the rest passes through; scale head_dim ** -0.5; logits not shifted.
- Attention is bidirectional inside a block and causal across blocks: the official generate passes a 4-D
  additive mask (0 keep, -inf drop) over blocks of block_length aligned at position 0 of the sequence,
  with position ids 0..seq-1. Here `forward` takes that 4-D mask (additive or boolean), or builds it from
  `block_length=` (and a 2-D padding mask: padded keys dropped, positions counted from the first real token).
  Neither: plain bidirectional attention (with the padding mask, if any).
- The mask id is not in the released config.json; the model cards sample with 156895 (eos 156892).
  `mask_token_id` in the config wins (tiny test configs use their own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .layers import RMSNorm, embed_inputs, init_weights, positions_from_mask
from .rope import apply_rope, rope_cos_sin

LLADA2_MASK_ID = 156895
LLADA2_EOS_ID = 156892


class LLaDA2MoeConfig(PretrainedConfig):
    """Official config keys. The defaults are LLaDA2.0-mini's / LLaDA2.1-mini's config.json (20 layers,
    hidden 2048, 16 heads / 4 KV heads of 128, 256 experts, 8 routed + 1 shared, first layer dense)."""

    model_type = "llada2_moe"

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        intermediate_size: int = 5120,
        moe_intermediate_size: int = 512,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 4,
        head_dim: int | None = 128,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_qk_norm: bool = True,
        use_bias: bool = False,
        norm_head: bool = False,
        rms_norm_eps: float = 1e-6,
        max_position_embeddings: int = 32768,
        rope_theta: float = 600000.0,
        rope_scaling: dict | None = None,
        partial_rotary_factor: float = 0.5,
        num_experts: int | None = 256,
        num_shared_experts: int | None = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        first_k_dense_replace: int = 1,
        norm_topk_prob: bool | None = True,
        score_function: str = "sigmoid",
        moe_router_enable_expert_bias: bool = True,
        tie_word_embeddings: bool = False,
        mask_token_id: int | None = None,
        pad_token_id: int | None = LLADA2_EOS_ID,
        eos_token_id: int | None = LLADA2_EOS_ID,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_qk_norm = use_qk_norm
        self.use_bias = use_bias
        self.norm_head = norm_head
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        if rope_scaling is not None:  # not stored: transformers 5 folds rope_scaling into rope_parameters
            raise ValueError(f"LLaDA2MoeConfig: unsupported rope_scaling={rope_scaling!r} (only null: plain RoPE).")
        self.partial_rotary_factor = partial_rotary_factor
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.score_function = score_function
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.mask_token_id = LLADA2_MASK_ID if mask_token_id is None else mask_token_id
        kwargs.setdefault("architectures", ["LLaDA2MoeModelLM"])
        super().__init__(
            vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs,
        )
        self.vocab_size = vocab_size
        self._validate()

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that RoPE rotates (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, index: int) -> bool:
        return self.num_experts is not None and index >= self.first_k_dense_replace

    def _validate(self) -> None:
        """Refuse what this class (and the official one) would compute differently, naming the key."""
        problems = []
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r} (only 'silu')")
        if self.norm_head:
            problems.append("norm_head=true (only false)")
        if self.score_function != "sigmoid":
            problems.append(f"score_function={self.score_function!r} (only 'sigmoid')")
        if self.norm_topk_prob is False and self.num_experts_per_tok > 1:
            problems.append("norm_topk_prob=false (the official router always renormalises the top-k weights)")
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            problems.append(f"partial_rotary_factor={self.partial_rotary_factor!r} (RoPE needs an even width in (0, head_dim])")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_key_value_heads}")
        if self.num_experts is not None:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                problems.append(f"num_experts_per_tok={self.num_experts_per_tok} with num_experts={self.num_experts}")
            if self.num_experts % self.n_group or not 0 < self.topk_group <= self.n_group:
                problems.append(f"n_group={self.n_group}, topk_group={self.topk_group} with num_experts={self.num_experts}")
            elif self.num_experts // self.n_group < 2:
                problems.append(f"n_group={self.n_group}: a group scores its best two experts, so it needs two or more")
            elif self.num_experts_per_tok > self.topk_group * (self.num_experts // self.n_group):
                problems.append(f"num_experts_per_tok={self.num_experts_per_tok} exceeds the experts of "
                                f"topk_group={self.topk_group} groups")
        if problems:
            raise ValueError("LLaDA2MoeConfig: unsupported " + "; ".join(problems) + ".")


def block_causal_mask(seq: int, block_length: int, device=None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch or 1, 1, seq, seq) bool, True = attend: a query sees the keys of its own block and of every
    earlier block (blocks of `block_length` aligned at column 0, as the official generate builds them);
    key_mask (batch, seq) bool drops padded keys (a padded query still sees itself)."""
    block = torch.arange(seq, device=device) // block_length
    allowed = block[None, :] <= block[:, None]  # (q, k)
    allowed = allowed[None, None]
    if key_mask is not None:
        # Padded keys dropped, but every query keeps itself: a block of padding alone would otherwise
        # attend to nothing, and its NaN values would reach real rows through 0 * NaN in SDPA.
        allowed = (allowed & key_mask[:, None, None, :].bool()) | torch.eye(seq, dtype=torch.bool, device=device)
    return allowed


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 4-D attention mask as bool (True = attend): boolean as is, additive (0 keep, -inf drop) by value."""
    return mask if mask.dtype == torch.bool else mask == 0


class LLaDA2MoeMLP(nn.Module):
    """SwiGLU FFN: a dense layer's FFN, one expert, or the shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2MoeGate(nn.Module):
    """Group-limited sigmoid router with a selection bias (module `mlp.gate`)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """flat (tokens, hidden) -> chosen experts (tokens, top_k) int64, their weights (tokens, top_k) float32."""
        scores = torch.sigmoid(F.linear(flat.float(), self.weight.float()))  # (tokens, experts)
        biased = scores + self.expert_bias.float()
        tokens = biased.shape[0]
        grouped = biased.view(tokens, self.n_group, -1)  # (tokens, groups, experts per group)
        group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (tokens, groups)
        keep_groups = group_score.topk(self.topk_group, dim=-1).indices
        group_ok = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
        allowed = group_ok[:, :, None].expand_as(grouped).reshape(tokens, -1)
        chosen = biased.masked_fill(~allowed, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return chosen, weights * self.routed_scaling_factor


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts plus the shared experts (module `mlp` of a MoE layer)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.gate = LLaDA2MoeGate(config)
        self.experts = nn.ModuleList(
            LLaDA2MoeMLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        if config.num_shared_experts:
            self.shared_experts = LLaDA2MoeMLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., hidden) -> (..., hidden)."""
        flat = x.reshape(-1, x.shape[-1])  # (tokens, hidden)
        chosen, weights = self.gate(flat)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        for e in chosen.unique().tolist():  # data-dependent dispatch (a host sync), as the official block
            token, slot = torch.where(chosen == e)
            out.index_add_(0, token, self.experts[e](flat[token]).float() * weights[token, slot, None])
        out = out.to(x.dtype).reshape(x.shape)
        if hasattr(self, "shared_experts"):
            out = out + self.shared_experts(x)
        return out


class LLaDA2MoeAttention(nn.Module):
    """Fused QKV projection, per-head QK norms, partial RoPE (module `attention`)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        hd = config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.query_key_value = nn.Linear(config.hidden_size, (self.n_heads + 2 * self.n_kv_heads) * hd,
                                         bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(hd, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(hd, config.rms_norm_eps)
        self.dense = nn.Linear(self.n_heads * hd, config.hidden_size, bias=config.use_bias)

    def split_heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (batch, t, hidden) -> q (batch, t, heads, hd), k, v (batch, t, kv_heads, hd); QK norms applied."""
        qkv = rearrange(self.query_key_value(h), "b t (h d) -> b t h d", d=self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        if hasattr(self, "query_layernorm"):
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        return q, k, v

    def forward(self, h: torch.Tensor, rope, mask: torch.Tensor | None) -> torch.Tensor:
        """mask: (batch or 1, 1, t, t) bool (True = attend) or None (bidirectional)."""
        cos, sin = rope
        q, k, v = (t.transpose(1, 2) for t in self.split_heads(h))  # (batch, heads, t, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale head_dim ** -0.5
        return self.dense(rearrange(out, "b h t d -> b t (h d)"))


class LLaDA2MoeDecoderLayer(nn.Module):
    """Returns a 1-tuple like the official layer."""

    def __init__(self, layer_idx: int, config: LLaDA2MoeConfig):
        super().__init__()
        d = config.hidden_size
        self.attention = LLaDA2MoeAttention(config)
        moe = config.is_moe_layer(layer_idx)
        self.mlp = LLaDA2MoeSparseMoeBlock(config) if moe else LLaDA2MoeMLP(d, config.intermediate_size)
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope, mask=None) -> tuple[torch.Tensor]:
        x = x + self.attention(self.input_layernorm(x), rope, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x,)


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)
        if isinstance(module, LLaDA2MoeGate):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.expert_bias)


class LLaDA2MoeModel(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(i, config) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        block_length: int | None = None,
    ) -> torch.Tensor:
        x = embed_inputs(self.word_embeddings, input_ids, inputs_embeds)  # (batch, seq, hidden)
        batch, seq = x.shape[:2]
        pad = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if position_ids is None:
            position_ids = positions_from_mask(pad, batch, seq, x.device)
        rope = rope_cos_sin(position_ids.expand(batch, seq), self.config.rotary_dim, self.config.rope_theta)
        if attention_mask is not None and attention_mask.dim() == 4:
            if block_length is not None:
                raise ValueError("Pass a 4-D attention_mask or block_length (with an optional 2-D padding mask), not both.")
            mask = as_bool_mask(attention_mask)
        elif block_length is not None:
            mask = block_causal_mask(seq, block_length, x.device, None if pad is None else pad.bool())
        else:
            mask = None if pad is None else pad.bool()[:, None, None, :]
        for layer in self.layers:
            (x,) = layer(x, rope, mask)
        return self.norm(x)


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """Logits (batch, seq, vocab) over all positions (not shifted). `block_length=`: the block-causal
    attention of block diffusion, built here (see the module docstring)."""

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.word_embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        block_length: int | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        logits = self.lm_head(self.model(input_ids, attention_mask, position_ids, inputs_embeds, block_length))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)
