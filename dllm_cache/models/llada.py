"""LLaDA (masked diffusion LM, Llama-style blocks) with the official checkpoint's names.

Module names, config keys and state-dict keys follow GSAI-ML/LLaDA-8B-Instruct
(`model.transformer.wte`, `model.transformer.blocks.{i}.{attn_norm,q_proj,k_proj,v_proj,
attn_out,ff_norm,ff_proj,up_proj,ff_out}`, `model.transformer.ln_f`, `model.transformer.ff_out`),
so `AutoModel.from_pretrained(local_dir)` loads a real checkpoint without remote code. LLaDA-1.5
(LLaDA-8B-Instruct aligned with VRPO) and LLaDA-V's language model use the same names; MMaDA subclasses
this class (mmada.py); LLaDA-MoE shares the model_type but not the architecture (llada_moe.py).
Positions are 0..seq-1 even under left padding, as the official model does.
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


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_ratio: int = 4,
        mlp_hidden_size: int | None = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        weight_tying: bool = False,
        activation_type: str = "silu",
        block_type: str = "llama",
        layer_norm_type: str = "rms",
        rope: bool = True,
        mask_token_id: int = 126336,
        pad_token_id: int = 126081,
        eos_token_id: int = 126081,
        **kwargs,
    ):
        if is_moe_config(kwargs):
            raise ValueError(
                "This config describes LLaDA-MoE (it has num_experts / expert_intermediate_size), not dense LLaDA. "
                "Load it with AutoConfig / AutoModel (after `import dllm_cache`) or dllm_cache.models.LLaDAMoEConfig."
            )
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.weight_tying = weight_tying
        self.activation_type = activation_type
        self.block_type = block_type
        self.layer_norm_type = layer_norm_type
        self.rope = rope
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(
            vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs
        )
        self.vocab_size = vocab_size
        unsupported = {
            "activation_type": (activation_type, "silu"),
            "block_type": (block_type, "llama"),
            "layer_norm_type": (layer_norm_type, "rms"),
            "rope": (rope, True),
        }
        for key, (got, want) in unsupported.items():
            if got != want:
                raise ValueError(f"LLaDAConfig.{key}={got!r} is not supported; only {want!r} (as in LLaDA-8B).")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """LLaDA-MoE's official config.json also says model_type "llada" (its architectures entry is
        LLaDAMoEModelLM), so AutoConfig sends it here: hand it to the MoE config."""
        if cls is LLaDAConfig and is_moe_config(config_dict):
            from .llada_moe import LLaDAMoEConfig

            return LLaDAMoEConfig.from_dict(config_dict, **kwargs)
        return super().from_dict(config_dict, **kwargs)

    @property
    def effective_n_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def ff_hidden(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model


def is_moe_config(config_dict: dict) -> bool:
    """A config dict of LLaDA-MoE rather than dense LLaDA (both use model_type "llada")."""
    return (
        "LLaDAMoEModelLM" in (config_dict.get("architectures") or ())
        or config_dict.get("num_experts") is not None
        or config_dict.get("expert_intermediate_size") is not None
    )


class LLaDALlamaBlock(nn.Module):
    """Pre-norm attention + SwiGLU block; returns (x, None) like the official block."""

    def __init__(self, layer_id: int, config: LLaDAConfig):
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        d, hd, kvh = config.d_model, config.head_dim, config.effective_n_kv_heads
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kvh * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kvh * hd, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, config.ff_hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, config.ff_hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(config.ff_hidden, d, bias=config.include_bias)
        self.act = nn.SiLU()

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """FFN on already-normalised input (batch, tokens, d_model)."""
        return self.ff_out(self.act(self.ff_proj(x)) * self.up_proj(x))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        cos, sin = rope
        hd = self.config.head_dim
        h = self.attn_norm(x)
        q = rearrange(self.q_proj(h), "b t (h d) -> b h t d", d=hd)
        k = rearrange(self.k_proj(h), "b t (h d) -> b h t d", d=hd)
        v = rearrange(self.v_proj(h), "b t (h d) -> b h t d", d=hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = x + self.attn_out(attend(q, k, v, key_mask))
        x = x + self.mlp(self.ff_norm(x))
        return x, None


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)


class LLaDAModel(nn.Module):
    """The `model` attribute of LLaDAModelLM: holds `transformer` like the official class."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        vocab = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, config.d_model),
                blocks=nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers)),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
            )
        )
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, vocab, bias=config.include_bias)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = embed_inputs(self.transformer.wte, input_ids, inputs_embeds)  # (batch, seq, d_model)
        batch, seq = x.shape[:2]
        positions = llada_positions(attention_mask, batch, seq, x.device)
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        key_mask = key_mask_from(attention_mask)
        for block in self.transformer.blocks:
            x, _ = block(x, rope, key_mask)
        x = self.transformer.ln_f(x)
        if self.config.weight_tying:
            return F.linear(x, self.transformer.wte.weight)
        return self.transformer.ff_out(x)


def llada_positions(attention_mask: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
    """Official LLaDA uses 0..seq-1 whatever the padding."""
    return torch.arange(seq, device=device).expand(batch, seq)


class LLaDAModelLM(LLaDAPreTrainedModel):
    """Masked diffusion LM head over all positions: logits (batch, seq, vocab)."""

    def __init__(self, config: LLaDAConfig):
        if not isinstance(config, LLaDAConfig):
            raise TypeError(
                f"LLaDAModelLM needs a LLaDAConfig, got {type(config).__name__}; "
                "load checkpoints with transformers.AutoModel (after `import dllm_cache`) to get the matching class."
            )
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        """input_ids (batch, seq), or inputs_embeds (batch, seq, d_model) for a prompt given as
        embeddings (LLaDA-V's image features); logits (batch, seq, vocab)."""
        logits = self.model(input_ids, attention_mask, inputs_embeds)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)
