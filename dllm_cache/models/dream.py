"""Dream (masked diffusion LM on a Qwen2 backbone) with the official checkpoint's names.

`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj` (q/k/v biased),
`model.layers.{i}.mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`,
`model.norm`, `lm_head`. Attention is bidirectional. Under left padding positions count
from the first real token, as Dream's own generation code does.
Note Dream's logits are shifted: position i predicts token i+1 (the sampler handles it).
Dream-Coder-v0 and DreamOn-v0 are this architecture: their READMEs (DreamLM/Dream-Coder, DreamLM/DreamOn)
load them with Dream's remote code (model_type "Dream"), which this class replaces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .layers import RMSNorm, attend, embed_inputs, init_weights, key_mask_from, positions_from_mask
from .rope import apply_rope, rope_cos_sin


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1000000.0,
        attention_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        mask_token_id: int = 151666,
        pad_token_id: int = 151643,
        eos_token_id: int = 151643,
        bos_token_id: int = 151643,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        # The Dream family's config class defaults to rope_scaling None and use_sliding_window False (the
        # only attention this class computes); any other value is refused rather than silently dropped.
        if kwargs.pop("rope_scaling", None) is not None:
            raise ValueError("DreamConfig.rope_scaling is not supported (only null: plain RoPE, as Dream-v0 uses).")
        if kwargs.pop("use_sliding_window", False):
            raise ValueError("DreamConfig.use_sliding_window=true is not supported: Dream attends bidirectionally "
                             "over the whole sequence.")
        super().__init__(
            vocab_size=vocab_size,
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            bos_token_id=bos_token_id,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.rope_theta = rope_theta
        if hidden_act != "silu":
            raise ValueError(f"DreamConfig.hidden_act={hidden_act!r} is not supported; only 'silu' (as in Dream-7B).")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(d, config.num_attention_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=True)
        self.o_proj = nn.Linear(config.num_attention_heads * hd, d, bias=False)
        self.head_dim = hd

    def forward(self, h: torch.Tensor, rope, key_mask) -> torch.Tensor:
        cos, sin = rope
        q = rearrange(self.q_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.k_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        v = rearrange(self.v_proj(h), "b t (h d) -> b h t d", d=self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(attend(q, k, v, key_mask))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    """Returns a 1-tuple like the official layer."""

    def __init__(self, layer_idx: int, config: DreamConfig):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope, key_mask=None) -> tuple[torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x,)


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)


class DreamBaseModel(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(i, config) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)  # (batch, seq, hidden)
        batch, seq = x.shape[:2]
        positions = positions_from_mask(attention_mask, batch, seq, x.device)
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        key_mask = key_mask_from(attention_mask)
        for layer in self.layers:
            (x,) = layer(x, rope, key_mask)
        return self.norm(x)


class DreamModel(DreamPreTrainedModel):
    """Logits (batch, seq, vocab) over all positions (shifted by one, as Dream is)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBaseModel(config)
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
