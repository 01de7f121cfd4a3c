"""Analytic FLOPs and memory of mixture-of-experts models (LLaDA-MoE, LLaDA 2.x): by hand on a toy shape,
against FlopCounterMode over whole generations (uncached, the feature cache, the block K/V cache), and the
weights / K/V of the published shapes."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dllm_cache.analysis.memory as memory
from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.analysis.flops import (
    ModelDims,
    _extra_flop_formulas,
    generation_cost,
    measure_step_flops,
    step_bytes,
    step_flops,
)
from dllm_cache.bench.memory import head_rows, run_peak
from dllm_cache.models.tiny import llada2_mini_config, tiny_llada2, tiny_llada2_config, tiny_llada_moe, tiny_llada_moe_config
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import DecodeTrace, steps_per_block

# Toy routed shape for hand arithmetic: d 8, one dense layer (d_ff 16) then two routed layers of 4 experts
# of width 6, top-2, a shared expert of width 4. Per token: attention q 128 + k 64 + v 64 + o 128 = 384;
# dense FFN 3 * 2 * 8 * 16 = 768; routed FFN router 2 * 8 * 4 = 64 + 2 experts 2 * 288 + shared 192 = 832.
TOY = ModelDims(d_model=8, n_layers=3, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16, vocab=10,
                n_experts=4, experts_per_tok=2, d_expert=6, d_shared=4, moe_layers=(1, 2))


def test_toy_moe_counts_by_hand():
    assert [TOY.ffn_flops(i) for i in range(3)] == [768, 832, 832]
    assert TOY.flops_token == 3 * 384 + 768 + 2 * 832 == 3584
    P, R = 3, 4  # T = 7; attention 2 * 2 * q * kv * head_dim 4 * 2 heads = 32 * q * kv per layer
    full = 7 * 3584 + 3 * (32 * 7 * 7) + 7 * 160
    assert step_flops(TOY, 1, P, R, "full") == full == 30912
    # partial, int(4 * 0.5) = 2 selected: layer 0 as a response step; layers 1, 2: V of all 4, then
    # q/k/o and the routed FFN for the 2 selected, whose queries attend to all 7 keys.
    routed = 4 * 64 + 2 * (128 + 64 + 128 + 832) + 32 * 2 * 7
    partial = (4 * (384 + 768) + 32 * 4 * 7) + 2 * routed + 4 * 160
    assert step_flops(TOY, 1, P, R, "partial", 0.5) == partial == 12160
    # prompt refresh: layer 0 full, layers 1, 2 the 3 prompt tokens plus the partial work
    prompt = (7 * 1152 + 32 * 49) + 2 * (3 * 1216 + 32 * 3 * 7) + 2 * routed + 7 * 160
    assert step_flops(TOY, 1, P, R, "prompt", 0.5) == prompt
    assert step_flops(TOY, 1, P, R, "block", rows=2) == 2 * 3584 + 3 * 32 * 2 * 7 + 4 * 160
    # A layer holds all its experts; a token multiplies by its 2 of them.
    assert TOY.layer_params(0) == 192 + 384 and TOY.layer_params(1) == 192 + 32 + 4 * 144 + 96
    assert TOY.params_layers == 576 + 2 * 896 and TOY.active_params_layers == 3584 // 2


def test_step_bytes_read_the_experts_the_tokens_reach():
    """Weights read by a routed layer: attention, router and shared expert, plus the expected distinct experts."""
    dense = ModelDims(8, 3, 2, 1, 4, 16, 10)
    assert TOY.experts_read(1) == 2 and TOY.experts_read(0) == 0
    assert TOY.experts_read(2) == pytest.approx(4 * (1 - 0.25))  # each expert missed by both: (1/2)^2
    one = memory.weights_bytes(TOY, 1) - memory.weights_bytes(dense, 1)  # the two routed layers' extra weights
    assert one == 2 * (896 - 576)
    # one row, one response token (R = 1, P = 0): both routed layers read 2 of their 4 experts
    got = TOY.layer_params(0) + 2 * (192 + 32 + 2 * 144 + 96) + 80
    kv, embed, logits = 3 * 2 * 4, 8, 10
    assert TOY.is_moe and got == 576 + 2 * 608 + 80
    assert step_bytes(TOY, 1, 0, 1, "response", dtype_bytes=1) == got + kv + embed + logits
    # many tokens reach every expert: the whole model is read
    many = step_bytes(TOY, 8, 64, 64, "full", dtype_bytes=1)
    assert many - step_bytes(dense, 8, 64, 64, "full", dtype_bytes=1) == pytest.approx(2 * (896 - 576), abs=1)


def test_moe_dims_from_both_config_styles():
    llada_moe = ModelDims.from_config(tiny_llada_moe_config())
    assert (llada_moe.n_experts, llada_moe.experts_per_tok, llada_moe.d_expert, llada_moe.d_shared) == (6, 2, 48, 32)
    assert llada_moe.moe_layers == (1, 2) and llada_moe.d_ff == 160 and llada_moe.n_kv_heads == 2
    llada2 = ModelDims.from_config(LLADA2_MINI)
    assert llada2 == ModelDims.from_config(llada2_mini_config())  # the dict of config.json keys and our config class
    assert llada2.moe_layers == tuple(range(1, 20)) and llada2.d_shared == 512 and llada2.d_ff == 5120
    assert llada2.head_dim == 128 and llada2.kv_dim == 512
    with pytest.raises(ValueError, match="num_experts_per_tok and moe_intermediate_size"):
        ModelDims.from_config({**LLADA2_MINI, "moe_intermediate_size": None})
    with pytest.raises(ValueError, match="which layers route"):
        ModelDims.from_config({**LLADA2_MINI, "moe_layer_freq": [1] * 20})
    with pytest.raises(ValueError, match="one 0/1 entry per layer"):
        ModelDims.from_config({**LLADA2_MINI, "first_k_dense_replace": None, "moe_layer_freq": [1] * 3})
    with pytest.raises(ValueError, match="allow_moe"):
        ModelDims.from_config(LLADA2_MINI, allow_moe=False)


def test_the_count_does_not_depend_on_the_routing():
    """Top-k routing: every token runs k experts, so a router that sends every token to the same two
    experts costs what random routing costs (the expert loop runs only routed tokens)."""
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    spread, skewed = tiny_llada_moe(), tiny_llada_moe()
    with torch.no_grad():
        for name, buf in skewed.named_buffers():
            if name.endswith("expert_bias"):
                buf.copy_(torch.tensor([9.0, 9.0, 0, 0, 0, 0]))  # softmax scores are < 1: experts 0, 1 always win
    dims = ModelDims.from_config(spread.config)
    expected = step_flops(dims, 2, 12, 0, "full")
    assert measure_step_flops(spread, ids) == measure_step_flops(skewed, ids) == expected


P, R, B = 4, 8, 4
RUNS = {
    "uncached": None,
    "feature": CacheConfig(prompt_interval=6, response_interval=4, transfer_ratio=0.25),  # all four step kinds
    "layer-budgets": CacheConfig(prompt_interval=5, response_interval=100, layer_ratios=(0.5, 0.25, 0.75)),
    "block-dual": CacheConfig(policy="block-dual", block_refresh=3),
}


def _generation_flops(model, config: CacheConfig | None) -> int:
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(1))
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    if config is None:
        with counter:
            generate(model, ids, gen_length=R, steps=R, block_length=B)
    else:
        with cache_enabled(model, config), counter:
            generate(model, ids, gen_length=R, steps=R, block_length=B)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("run", sorted(RUNS))
def test_llada_moe_generation_matches_flop_counter(run):
    """A whole generation under FlopCounterMode equals generation_cost: routed experts, the dense first
    layer, the router and the shared expert, on every step kind of the feature cache and the block cache."""
    model = tiny_llada_moe()
    dims = ModelDims.from_config(model.config)
    config = RUNS[run]
    # our sampler asks a cached model for the current block's rows; an uncached model computes them all
    rows = None if config is None or config.is_block else head_rows("llada", P, R, B, tied=False)
    cost = generation_cost(dims, 2, P, R, R, config, B, logits_tokens=rows)
    assert _generation_flops(model, config) == cost.flops
    if config is not None:  # the routed FFN is most of the work the cache removes
        assert cost.flops < generation_cost(dims, 2, P, R, R, None, B).flops


# ----------------------------------------------------------------------------- LLaDA 2.x

LLADA2_RUNS = {
    "uncached": None,
    "feature": CacheConfig(policy="feature", response_interval=2, layer_ratios=(0.5, 0.25, 0.75)),  # partial steps
    "exact": CacheConfig(policy="block-prefix"),  # committed blocks' K/V, the block recomputed every step
}


@pytest.mark.parametrize("run", sorted(LLADA2_RUNS))
def test_llada2_generation_matches_flop_counter(run):
    """LLaDA 2.x as its sampler runs it: uncached, each step the model over the columns up to the block's end;
    cached, the committed blocks once (the prompt's whole blocks, then each decoded block) and the block's rows
    every step, with the fused Q/K/V projection. The prompt ends inside a block; threshold decoding makes the
    steps per block uneven (read from the trace)."""
    model = tiny_llada2()
    dims = ModelDims.from_config(model.config)
    assert dims.block_causal and not dims.fused_qkv and dims.moe_layers == (1, 2)  # a dense first layer
    config = LLADA2_RUNS[run]
    P2, R2, B2 = 6, 10, 4  # blocks [4, 8) (2 prompt columns), [8, 12), [12, 16)
    ids = torch.randint(0, 200, (2, P2), generator=torch.Generator().manual_seed(1))
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    trace = DecodeTrace()
    with cache_enabled(model, config) if config is not None else nullcontext(), counter:
        generate(model, ids, gen_length=R2, block_length=B2, steps=4, threshold=0.3, trace=trace)
    per_block = steps_per_block(trace.rows(), 3)
    assert sum(per_block) < 12  # the threshold decoded some blocks in fewer steps
    cost = generation_cost(dims, 2, P2, R2, 0, config, B2, steps_per_block=per_block)
    assert int(counter.get_total_flops()) == cost.flops
    if config is not None and config.policy == "feature":
        assert cost.step_counts["partial"] == sum(n // 2 for n in per_block)


def test_llada2_cost_by_hand():
    """The block-causal schedule written out: P 6, R 10, B 4, two steps per block, feature cache Kr 2. A block's
    first step runs the columns not committed yet with the block (their queries against the keys up to the
    block's end), the second a partial step of the block's 4 rows."""
    d = ModelDims.from_config(tiny_llada2_config())
    cfg = CacheConfig(policy="feature", response_interval=2, transfer_ratio=0.5)
    sel = (2, 2, 2)
    expect = 0
    for lo, uncommitted in ((4, 0), (8, 4), (12, 8)):
        rows = lo + 4 - uncommitted
        expect += rows * d.flops_token + 3 * d.attention_flops(rows, lo + 4) + 4 * 2 * 64 * 256  # head: 4 rows
        expect += step_flops(d, 1, lo, 4, "partial", selected=sel, logits_tokens=4)
    assert generation_cost(d, 1, 6, 10, 6, cfg, 4).flops == expect
    uncached = sum(2 * step_flops(d, 1, 0, hi, "full") for hi in (8, 12, 16))
    assert generation_cost(d, 1, 6, 10, 6, None, 4).flops == uncached
    # LLaDA 2.x pays as split projections do (hooks/llada2.py slices query_key_value); a projection computed
    # whole whenever it runs (fused_qkv) would make the drift test of 4 rows and the 2 selected rows pay Q, K and V
    fused = ModelDims(**{**d.to_dict(), "fused_qkv": True})
    qkv = d.flops_q + d.flops_k + d.flops_v
    extra = 2 * (4 * (qkv - d.flops_v) + 2 * d.flops_v)  # layers 1 and 2
    assert step_flops(fused, 1, 8, 4, "partial", selected=sel) - step_flops(d, 1, 8, 4, "partial", selected=sel) == extra
    with pytest.raises(ValueError, match="pass block_length"):
        generation_cost(d, 1, 6, 10, 6, None)


# ----------------------------------------------------------------------------- memory

# LLaDA2.0-mini's shape (config.json keys; intermediate_size 5120 is Ling-mini-2.0's, whose published
# 789M non-embedding active parameters it reproduces below).
LLADA2_MINI = dict(
    model_type="llada2_moe", hidden_size=2048, intermediate_size=5120, moe_intermediate_size=512, num_experts=256,
    num_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=1, num_hidden_layers=20,
    num_attention_heads=16, num_key_value_heads=4, head_dim=128, vocab_size=157184, tie_word_embeddings=False,
)


def test_published_moe_shapes():
    """LLaDA2.0-mini: "16B total, 1.4B active" (active counting the embedding and the LM head: 789M in the
    layers, as Ling-mini-2.0 reports). LLaDA-MoE-7B-A1B (our config's defaults: 16 routed layers of 64
    experts, top-8): "7B total, 1.4B active" (active counting the layers and one 157184 x 2048 matrix)."""
    mini = ModelDims.from_config(LLADA2_MINI)
    embed = 157184 * 2048
    total = mini.params_layers + 2 * embed
    # by hand: attention 2 x 2048^2 + 2 x 2048 x 512 = 10,485,760 a layer; layer 0 dense 3 x 2048 x 5120 =
    # 31,457,280; a routed layer's router 2048 x 256 = 524,288, one expert (or the shared one) 3,145,728
    attn, dense, router, expert = 10_485_760, 31_457_280, 524_288, 3_145_728
    assert mini.active_params_layers == attn + dense + 19 * (attn + router + 9 * expert) == 789_053_440
    assert total == attn + dense + 19 * (attn + router + 257 * expert) + 2 * embed == 16_255_549_440
    assert round(total / 1e9) == 16
    assert round((mini.active_params_layers + 2 * embed) / 1e8) == 14
    assert memory.weights_bytes(mini, 2) == 2 * total  # bf16: 30.3 GiB
    # K/V: 4 KV heads of 128 (not 16 heads: GQA), the deltas two d_model vectors
    assert memory.bytes_per_token_layer(mini, 2) == {"prompt": 2048, "response": 2048 + 8192}
    cache = memory.estimate_cache_bytes(mini, 1, 1024, 256, 2)
    assert cache["prompt_kv"] == 20 * 1024 * 2048 and cache["response_deltas"] == 20 * 256 * 8192

    from dllm_cache.models.llada_moe import LLaDAMoEConfig

    moe = ModelDims.from_config(LLaDAMoEConfig())
    assert moe.moe_layers == tuple(range(16)) and moe.n_experts == 64
    assert round((moe.params_layers + 2 * embed) / 1e9, 1) == 7.4
    assert round((moe.active_params_layers + embed) / 1e9, 1) == 1.4


def test_bench_fit_check_counts_every_expert():
    """`dllm-cache bench`'s peak (and so its pre-flight check) holds all experts' weights, and a token's
    temporaries are those of its top-k experts."""
    config = SimpleNamespace(**LLADA2_MINI)
    peak = run_peak(config, 16, 512, 256, 32, 2, cached=True)
    mini = ModelDims.from_config(LLADA2_MINI)
    assert peak["weights"] == memory.weights_bytes(mini, 2) > 30 * 2**30
    assert peak["cache"] == memory.estimate_block_causal_cache_bytes(mini, 16, 512, 256, 32, 2)["total"]
    # FFN temporaries per token: the dense first layer's gate, up and product (3 x 5120) outweigh a routed
    # layer's (float32 router scores over 256 experts, and 3 x (8 x 512 + 512)), unless every layer routes
    assert memory._ffn_temporaries_per_token(mini, 2) == 3 * 5120 * 2
    all_routed = ModelDims.from_config({**LLADA2_MINI, "first_k_dense_replace": 0})
    assert memory._ffn_temporaries_per_token(all_routed, 2) == 4 * 256 + 3 * (8 * 512 + 512) * 2
    assert peak["step"] == 16 * 768 * (2 * 2048 * 2 + 4 * 2048 + 3 * 5120 * 2)  # the widest layer, 768 tokens


def test_llada_moe_generation_that_cannot_fit_stops(monkeypatch):
    model = tiny_llada_moe()
    dims = ModelDims.from_config(model.config)
    need = memory.estimate_cache_bytes(dims, 3, P, R, 4)["total"] + memory.estimate_step_bytes(dims, 3, P + R, B, 4)
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: need + 1)  # batch 3 fits, batch 4 does not
    ids = torch.randint(0, 200, (4, P))
    with cache_enabled(model, CacheConfig()):
        with pytest.raises(memory.NotEnoughMemoryError, match="largest batch that fits is 3"):
            generate(model, ids, gen_length=R, steps=2, block_length=B)
        generate(model, ids[:3], gen_length=R, steps=2, block_length=B)  # the batch it named runs


def test_block_causal_cache_estimate_is_what_the_engine_allocates():
    """LLaDA 2.x's cache keeps K/V of every column (rounded up to whole blocks) and one block's features."""
    from dllm_cache.engine.block_causal import BlockCausalCache
    from dllm_cache.hooks import adapter_for

    model = tiny_llada2()
    dims = ModelDims.from_config(model.config)
    batch, P2, R2, B2 = 2, 6, 10, 4  # 16 columns
    positions = torch.arange(16).expand(batch, 16)
    cache = BlockCausalCache(model, adapter_for(model), CacheConfig(policy="feature"), batch=batch, total=16,
                             block_length=B2, positions=positions, key_mask=None)
    est = memory.estimate_block_causal_cache_bytes(dims, batch, P2, R2, B2, dtype_bytes=4)
    kv = sum(t.numel() * t.element_size() for store in cache.kv for t in store.tensors().values())
    deltas = sum(t.numel() * t.element_size() for pair in cache.deltas for t in pair)
    assert est["prompt_kv"] + est["response_kv"] == kv == 3 * 16 * batch * 2 * 32 * 4  # 3 layers, 2 KV heads of 16
    assert est["response_deltas"] == deltas == 3 * batch * B2 * 2 * 64 * 4
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    # the bench's peak of a cached LLaDA2.0-mini run holds this cache, not the feature cache's whole-response deltas
    mini = ModelDims.from_config(LLADA2_MINI)
    peak = memory.generation_peak_bytes(mini, 16, 512, 256, 2, cached=True, block_length=32)
    assert peak["cache"] == memory.estimate_block_causal_cache_bytes(mini, 16, 512, 256, 32)["total"]
    assert peak["cache"] < memory.estimate_cache_bytes(mini, 16, 512, 256, 2)["total"] and peak["graphs"] == 0


def test_block_causal_fit_check(monkeypatch):
    mini = ModelDims.from_config(LLADA2_MINI)

    def need(b):
        return (memory.estimate_block_causal_cache_bytes(mini, b, 4000, 1024, 32)["total"]
                + memory.estimate_step_bytes(mini, b, 4000, 32, 2))

    monkeypatch.setattr(memory, "device_free_bytes", lambda device: need(5) + 1)
    memory.check_block_causal_fits(mini, 5, 4000, 1024, 32, "cuda")
    with pytest.raises(memory.NotEnoughMemoryError, match="batch 6 .*largest batch that fits is 5"):
        memory.check_block_causal_fits(mini, 6, 4000, 1024, 32, "cuda")
    monkeypatch.setenv(memory.CHECK_ENV, "0")
    memory.check_block_causal_fits(mini, 6, 4000, 1024, 32, "cuda")
