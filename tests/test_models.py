"""Our models carry the official checkpoint names and load through transformers' Auto classes."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

import dllm_cache  # noqa: F401
from dllm_cache.models import DreamModel, LLaDAModelLM
from dllm_cache.models.tiny import tiny_dream, tiny_llada

LLADA_BLOCK_KEYS = {
    f"model.transformer.blocks.0.{n}.weight"
    for n in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")
}
DREAM_LAYER_KEYS = {
    "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.v_proj.bias",
    "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
}


def test_llada_official_state_dict_names():
    keys = set(tiny_llada().state_dict())
    assert LLADA_BLOCK_KEYS <= keys
    assert {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"} <= keys
    assert not any("rotary" in k for k in keys)  # RoPE has no weights, as in the official checkpoint


def test_dream_official_state_dict_names():
    keys = set(tiny_dream().state_dict())
    assert DREAM_LAYER_KEYS <= keys
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert "model.layers.0.self_attn.o_proj.bias" not in keys


@pytest.mark.parametrize("factory,cls,model_type", [(tiny_llada, LLaDAModelLM, "llada"), (tiny_dream, DreamModel, "Dream")])
def test_save_and_auto_load_round_trip(tmp_path, factory, cls, model_type):
    model = factory()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == model_type
    assert AutoConfig.from_pretrained(tmp_path).model_type == model_type
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, cls)
    ids = torch.randint(0, 200, (2, 9))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert torch.equal(model(ids).logits, loaded.eval()(ids).logits)


def test_official_llada_config_json_loads(tmp_path):
    """A config.json shaped like LLaDA-8B-Instruct's (with its remote-code auto_map) maps to our class."""
    official = {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "model_type": "llada", "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
        "mlp_hidden_size": 96, "mlp_ratio": 4, "vocab_size": 256, "embedding_size": 256,
        "max_sequence_length": 128, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "activation_type": "silu",
        "block_type": "llama", "layer_norm_type": "rms", "include_bias": False, "include_qkv_bias": False,
        "weight_tying": False, "mask_token_id": 255, "pad_token_id": 254, "eos_token_id": 254,
        "alibi": False, "rope": True, "flash_attention": False, "init_fn": "mitchell",
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    model = AutoModel.from_config(AutoConfig.from_pretrained(tmp_path))
    assert isinstance(model, LLaDAModelLM)
    assert model.model.transformer.blocks[0].ff_proj.weight.shape == (96, 64)


def test_unsupported_llada_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="block_type"):
        dllm_cache.models.LLaDAConfig(block_type="sequential")


def test_left_padding_matches_unpadded_dream():
    """Dream counts positions from the first real token: a left-padded row equals the same row unpadded."""
    model = tiny_dream()
    ids = torch.randint(0, 200, (1, 8))
    pad = torch.full((1, 3), model.config.pad_token_id)
    padded = torch.cat([pad, ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    assert torch.allclose(model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits, atol=1e-5)
