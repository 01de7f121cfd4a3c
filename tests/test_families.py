"""Model families beyond LLaDA-8B / Dream-7B: their checkpoints load into our classes, and the cache
serves them exactly.

Checkpoint-compatibility tests write a config.json shaped like the family's official one and a
safetensors file whose tensor names are written out here from the official modeling files (not
taken from our classes), then check that transformers' Auto classes load it with no missing and no
unexpected keys. Sources are listed in docs/models.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

import dllm_cache
from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache
from dllm_cache.hooks import adapter_for, family_of
from dllm_cache.models import DreamModel, LLaDAModelLM, LLaDAMoEConfig, LLaDAMoEModelLM, MMadaModelLM
from dllm_cache.models.llada_moe import LLaDAMoESparseMoeBlock
from dllm_cache.models.tiny import tiny_llada_moe, tiny_llada_moe_config
from dllm_cache.sampling.generate import generate
from tests.helpers import logits_along, max_err, trajectory

ATOL_FP32 = 1e-5
REFRESH_EVERY_STEP = CacheConfig(prompt_interval=1, response_interval=1)

# Tiny shapes shared by the checkpoint fixtures.
D, HEADS, KV_HEADS, LAYERS, FF, VOCAB = 32, 4, 2, 2, 48, 64
HEAD_DIM = D // HEADS


def _llada_tensors() -> dict[str, tuple[int, ...]]:
    """LLaDA-8B-Instruct / LLaDA-1.5 / MMaDA / LLaDA-V language model: GSAI-ML modeling_llada.py names."""
    shapes = {"model.transformer.wte.weight": (VOCAB, D), "model.transformer.ln_f.weight": (D,),
              "model.transformer.ff_out.weight": (VOCAB, D)}
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        shapes.update({
            p + "attn_norm.weight": (D,), p + "ff_norm.weight": (D,), p + "q_proj.weight": (D, D),
            p + "k_proj.weight": (KV_HEADS * HEAD_DIM, D), p + "v_proj.weight": (KV_HEADS * HEAD_DIM, D),
            p + "attn_out.weight": (D, D), p + "ff_proj.weight": (FF, D), p + "up_proj.weight": (FF, D),
            p + "ff_out.weight": (D, FF),
        })
    return shapes


def _dream_tensors() -> dict[str, tuple[int, ...]]:
    """Dream-v0 / Dream-Coder-v0 / DreamOn-v0 (Qwen2 names, biased q/k/v, untied lm_head)."""
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,), "lm_head.weight": (VOCAB, D)}
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (D, D), p + "self_attn.q_proj.bias": (D,),
            p + "self_attn.k_proj.weight": (kv, D), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, D), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (D, D), p + "mlp.gate_proj.weight": (FF, D),
            p + "mlp.up_proj.weight": (FF, D), p + "mlp.down_proj.weight": (D, FF),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
        })
    return shapes


def _llada_moe_tensors(experts: int, expert_ff: int, shared_ff: int) -> dict[str, tuple[int, ...]]:
    """inclusionAI LLaDA-MoE modeling_lladamoe.py: layer 0 dense, layer 1 routed + shared expert + expert bias."""
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,), "lm_head.weight": (VOCAB, D)}
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (kv, D),
            p + "self_attn.v_proj.weight": (kv, D), p + "self_attn.o_proj.weight": (D, D),
            p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
        })
    shapes.update({"model.layers.0.mlp.gate_proj.weight": (FF, D), "model.layers.0.mlp.up_proj.weight": (FF, D),
                   "model.layers.0.mlp.down_proj.weight": (D, FF)})
    p = "model.layers.1."
    shapes.update({p + "mlp.gate.weight": (experts, D), p + "mlp.expert_bias": (experts,)})
    for e in range(experts):
        shapes.update({f"{p}mlp.experts.{e}.gate_proj.weight": (expert_ff, D),
                       f"{p}mlp.experts.{e}.up_proj.weight": (expert_ff, D),
                       f"{p}mlp.experts.{e}.down_proj.weight": (D, expert_ff)})
    shapes.update({p + "shared_expert.gate_proj.weight": (shared_ff, D), p + "shared_expert.up_proj.weight": (shared_ff, D),
                   p + "shared_expert.down_proj.weight": (D, shared_ff)})
    return shapes


LLADA_CONFIG = {  # keys of LLaDA-8B-Instruct's config.json, which LLaDA-1.5 (a VRPO fine-tune of it) shares
    "architectures": ["LLaDAModelLM"],
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "model_type": "llada", "d_model": D, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "n_layers": LAYERS,
    "mlp_hidden_size": FF, "mlp_ratio": 4, "vocab_size": VOCAB, "embedding_size": VOCAB, "max_sequence_length": 128,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "activation_type": "silu", "block_type": "llama",
    "layer_norm_type": "rms", "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
    "mask_token_id": VOCAB - 1, "pad_token_id": VOCAB - 2, "eos_token_id": VOCAB - 2, "alibi": False, "rope": True,
    "flash_attention": False, "init_fn": "mitchell", "attention_layer_norm": False, "bias_for_layer_norm": False,
}
MMADA_CONFIG = {  # MMaDA: the LLaDA keys under model_type "mmada" plus its joint-vocabulary keys
    **LLADA_CONFIG, "architectures": ["MMadaModelLM"], "model_type": "mmada",
    "auto_map": {"AutoConfig": "modeling_mmada.MMadaConfig", "AutoModel": "modeling_mmada.MMadaModelLM"},
    "llm_vocab_size": 48, "codebook_size": 16, "num_vq_tokens": 8, "num_new_special_tokens": 0,
    "new_vocab_size": VOCAB, "mask_token_id": 47, "pad_token_id": 46, "eos_token_id": 46,
}
DREAM_CODER_CONFIG = {  # Dream-Coder-v0 / DreamOn-v0: Dream's remote code and keys (Qwen2.5-Coder backbone)
    "architectures": ["DreamModel"],
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "model_type": "Dream", "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "hidden_act": "silu",
    "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "use_sliding_window": False, "sliding_window": 128, "max_window_layers": LAYERS, "tie_word_embeddings": False,
    "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": False, "mask_token_id": VOCAB - 1,
    "pad_token_id": VOCAB - 2, "eos_token_id": VOCAB - 2, "bos_token_id": VOCAB - 3,
}
LLADA_MOE_CONFIG = {  # inclusionAI LLaDA-MoE: model_type "llada" (shared with dense LLaDA), OLMoE-style keys
    "architectures": ["LLaDAMoEModelLM"],
    "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAConfig", "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"},
    "model_type": "llada", "vocab_size": VOCAB, "hidden_size": D, "dense_intermediate_size": FF,
    "expert_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "hidden_act": "silu",
    "max_position_embeddings": 128, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": False,
    "rope_theta": 50000.0, "partial_rotary_factor": 1.0, "rope_scaling": None, "attention_bias": False,
    "attention_dropout": 0.0, "clip_qkv": None, "num_experts_per_tok": 2, "num_experts": 4,
    "output_router_logits": False, "router_aux_loss_coef": 0.01, "norm_topk_prob": None, "qk_layernorm": True,
    "moe_layer_freq": [0, 1], "moe_router_enable_expert_bias": True, "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1, "router_num_group": -2, "router_topk_group": -2, "pad_token_id": VOCAB - 2,
    "eos_token_id": VOCAB - 2, "tie_word_embeddings": False,
}


def _write_checkpoint(path, config: dict, shapes: dict[str, tuple[int, ...]], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        norm = len(shape) == 1 and name.endswith("norm.weight")
        tensors[name] = torch.ones(shape) + 0.05 * torch.randn(shape, generator=g) if norm else \
            0.15 * torch.randn(shape, generator=g)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    return tensors


@pytest.mark.parametrize(
    "config,shapes,cls,family,load_kwargs",
    [
        (LLADA_CONFIG, _llada_tensors(), LLaDAModelLM, "llada", {}),
        (MMADA_CONFIG, _llada_tensors(), MMadaModelLM, "llada", {}),
        (DREAM_CODER_CONFIG, _dream_tensors(), DreamModel, "dream", {}),
        # LLaDA-MoE's config.json has no mask_token_id (156895 by default); the tiny vocab needs its own.
        (LLADA_MOE_CONFIG, _llada_moe_tensors(experts=4, expert_ff=16, shared_ff=24), LLaDAMoEModelLM, "llada_moe",
         {"mask_token_id": VOCAB - 1}),
    ],
    ids=["llada-1.5", "mmada", "dream-coder", "llada-moe"],
)
def test_official_checkpoint_loads_and_caches_exactly(tmp_path, config, shapes, cls, family, load_kwargs):
    """Official config.json + official tensor names -> our class, every tensor used, none missing; then
    the cache with nothing stale reproduces the uncached logits on the loaded model."""
    tensors = _write_checkpoint(tmp_path, config, shapes)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == cls.config_class.__name__
    model, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True, **load_kwargs)
    assert isinstance(model, cls)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    state = model.state_dict()
    assert set(state) == set(tensors)
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    assert family_of(model) == family
    model.eval()
    seqs, mask = trajectory(model, batch=2, prompt_len=6, resp_len=8, steps=3, high=model.config.pad_token_id)
    ref = logits_along(model, seqs, mask)
    with cache_enabled(model, REFRESH_EVERY_STEP):
        out = logits_along(model, seqs, mask)
    assert max_err(out, ref) <= ATOL_FP32


def test_llada_moe_config_routes_by_keys_not_model_type():
    """Dense LLaDA and LLaDA-MoE share model_type "llada": the MoE keys decide, both ways."""
    moe = dllm_cache.models.LLaDAConfig.from_dict(dict(LLADA_MOE_CONFIG))
    assert isinstance(moe, LLaDAMoEConfig)
    assert moe.mask_token_id == 156895  # not in the official config.json: the model card's mask id
    dense = dllm_cache.models.LLaDAConfig.from_dict(dict(LLADA_CONFIG))
    assert type(dense) is dllm_cache.models.LLaDAConfig
    with pytest.raises(ValueError, match="describes LLaDA-MoE"):
        dllm_cache.models.LLaDAConfig(**{k: v for k, v in LLADA_MOE_CONFIG.items() if k != "model_type"})
    with pytest.raises(TypeError, match="LLaDAModelLM needs a LLaDAConfig"):
        LLaDAModelLM(moe)


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(clip_qkv=8.0), "clip_qkv"),
        (dict(moe_router_score_function="sigmoid"), "moe_router_score_function"),
        (dict(moe_layer_freq=[1]), "moe_layer_freq has 1 entries for 3 layers"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
    ],
)
def test_llada_moe_unsupported_config_is_a_clear_error(override, match):
    with pytest.raises(ValueError, match=match):
        tiny_llada_moe_config(**override)


def test_moe_routing_is_per_token():
    """The routed FFN over any subset of tokens equals those tokens' rows of the FFN over all tokens,
    and the sparse dispatch equals a dense reference of the official routing (softmax, + expert bias,
    top-k, weights not renormalised)."""
    torch.manual_seed(0)
    block = LLaDAMoESparseMoeBlock(tiny_llada_moe_config()).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.2)
        block.expert_bias.normal_(0.0, 0.05)
        x = torch.randn(2, 9, 64)
        full = block(x)
        idx = torch.tensor([[0, 3, 4, 8], [1, 2, 5, 7]])
        subset = block(x.gather(1, idx[..., None].expand(-1, -1, 64)))
        assert (subset - full.gather(1, idx[..., None].expand(-1, -1, 64))).abs().max() <= ATOL_FP32

        probs = torch.softmax(block.gate(x).float(), dim=-1) + block.expert_bias  # (2, 9, experts)
        weights, chosen = probs.topk(block.top_k, dim=-1)
        every = torch.stack([expert(x) for expert in block.experts], dim=-2)  # (2, 9, experts, 64)
        picked = every.gather(2, chosen[..., None].expand(-1, -1, -1, 64))  # (2, 9, top_k, 64)
        dense = (picked * weights[..., None]).sum(dim=2)
    assert (full - dense).abs().max() <= ATOL_FP32


def test_moe_cache_recomputes_routed_ffn_for_selected_tokens_only():
    """On partial steps the MoE FFN sees exactly the selected tokens (int(R * ratio) per row)."""
    model = tiny_llada_moe()
    seen = []
    block = model.model.layers[1].mlp
    hook = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    seqs, mask = trajectory(model, batch=2, prompt_len=6, resp_len=16, steps=3, padded=False)
    with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=0.25)):
        logits_along(model, seqs, mask)
        stats = cache_stats(model)
    hook.remove()
    assert stats["partial_steps"] == 2
    assert seen[0][:2] == (2, 22)  # step 0: every token
    assert seen[1][:2] == seen[2][:2] == (2, 4)  # then int(16 * 0.25) selected response tokens per row


def test_moe_cache_never_tries_cuda_graphs_or_compile():
    """Expert dispatch synchronises with the host, so the adapter opts out of graph capture and compile."""
    from dllm_cache.engine.layer import cached_block_forward

    model = tiny_llada_moe()
    assert adapter_for(model).graph_capturable is False
    with pytest.warns(UserWarning, match="compile=True has no effect on llada_moe"):
        enable_cache(model, CacheConfig(compile=True))
    try:
        patched = model.__dict__["_dllm_cache_state"]
        assert patched.state.graphs_disabled and patched.layer_forward is cached_block_forward
    finally:
        disable_cache(model)


@pytest.mark.parametrize("family", ["llada_moe", "mmada"])
def test_sampler_with_cache_refreshing_every_step_gives_the_uncached_tokens(family):
    """(The default schedule's generation runs in tests/test_generate.py for every family.)"""
    from tests.conftest import FACTORIES

    model = FACTORIES[family]()
    prompt = torch.randint(0, 200, (2, 6))
    plain = generate(model, prompt, gen_length=8, steps=8, block_length=4)
    with cache_enabled(model, REFRESH_EVERY_STEP):
        exact = generate(model, prompt, gen_length=8, steps=8, block_length=4)
    assert torch.equal(exact, plain) and not (plain[:, 6:] == model.config.mask_token_id).any()


class _LLaDA2MoeModelLM(torch.nn.Module):
    """Stand-in with LLaDA 2.0's config model_type and class name but none of its modules."""

    def __init__(self):
        super().__init__()
        self.config = type("LLaDA2MoeConfig", (), {"model_type": "llada2_moe"})()


def test_llada2_is_supported_and_a_stand_in_is_a_clear_error():
    """LLaDA 2.x is served since session 8 (tests/test_llada2.py); a model without its modules is named as such."""
    from dllm_cache.models.tiny import tiny_llada2

    assert family_of(tiny_llada2()) == "llada2_moe"
    model = _LLaDA2MoeModelLM()
    with pytest.raises(ValueError, match="does not know how to cache.*llada2_moe"):
        enable_cache(model)
