"""The analytic FLOPs model: checked by hand on a toy shape and against FlopCounterMode."""

from __future__ import annotations

import pytest
import torch

from dllm_cache import CacheConfig, disable_cache, enable_cache, reset_cache
from dllm_cache.analysis.flops import (
    FEATURE_KINDS,
    ModelDims,
    generation_cost,
    generation_flops,
    lm_head_tokens,
    measure_step_flops,
    roofline_seconds,
    schedule_counts,
    step_bytes,
    step_flops,
    step_kind,
)
from dllm_cache.engine.schedule import step_kind as core_step_kind
from dllm_cache.models.tiny import dream_7b_config, llada_8b_config, tiny_dream, tiny_llada

# Toy shape for hand arithmetic: per token and layer q 128, k 64, v 64, o 128, FFN 768.
TOY = ModelDims(d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16, vocab=10)
P, R = 3, 4  # T = 7
FULL = 2 * (7 * 1152 + 4 * 7 * 7 * 8) + 7 * 2 * 8 * 10  # 20384
# Response and partial steps run the LM head on the R response rows only (prompt logits reused).
RESPONSE = 2 * (4 * 1152 + 4 * 4 * 7 * 8) + 4 * 2 * 8 * 10  # 11648
PARTIAL_HALF = (4 * 1152 + 4 * 4 * 7 * 8) + (4 * 64 + 2 * (128 + 64 + 128 + 768) + 4 * 2 * 7 * 8) + 640  # 9024
PROMPT_HALF = (7 * 1152 + 4 * 7 * 7 * 8) + (3 * 1152 + 4 * 3 * 7 * 8) + 2880 + 1120  # 17760


def test_toy_counts_by_hand():
    assert TOY.flops_token_layer == 1152
    assert step_flops(TOY, 1, P, R, "full") == FULL == 20384
    assert step_flops(TOY, 1, P, R, "uncached") == FULL
    assert step_flops(TOY, 1, P, R, "response") == RESPONSE == 11648
    assert step_flops(TOY, 1, P, R, "partial", transfer_ratio=0.5) == PARTIAL_HALF == 9024
    assert step_flops(TOY, 1, P, R, "prompt", transfer_ratio=0.5) == PROMPT_HALF == 17760
    assert step_flops(TOY, 3, P, R, "full") == 3 * FULL
    # int(4 * 0.3) = 1 selected token (and the V of all 4 for the drift test); int(4 * 0.2) = 0
    # selects nothing, so the layers after the first project nothing at all.
    assert step_flops(TOY, 1, P, R, "partial", 0.3) - step_flops(TOY, 1, P, R, "partial", 0.0) == (
        4 * 64 + 1 * (128 + 64 + 128 + 768) + 4 * 1 * 7 * 8
    )
    assert step_flops(TOY, 1, P, R, "partial", 0.2) == (4 * 1152 + 4 * 4 * 7 * 8) + 640
    assert step_flops(TOY, 1, P, R, "partial", 0.5, selected=1) == step_flops(TOY, 1, P, R, "partial", 0.3)
    # Explicit LM-head rows (e.g. a weight-tied LLaDA, whose head the cache cannot patch).
    assert step_flops(TOY, 1, P, R, "full", logits_tokens=R) == FULL - 3 * 2 * 8 * 10
    assert step_flops(TOY, 1, P, R, "partial", 0.5, logits_tokens=P + R) == PARTIAL_HALF + 3 * 160
    assert lm_head_tokens("partial", P, R) == R and lm_head_tokens("prompt", P, R) == P + R
    # Rows per step kind (a caller that asks for fewer rows, as the samplers do).
    rows = {"full": 2, "prompt": 2, "response": 1, "partial": 1}
    assert step_flops(TOY, 1, P, R, "full", logits_tokens=rows) == FULL - 5 * 160
    assert step_flops(TOY, 1, P, R, "partial", 0.5, logits_tokens=rows) == PARTIAL_HALF - 3 * 160


def test_step_bytes_counted_element_by_element():
    """step_bytes on the toy shape against a count written from the shapes, element by element (2 bytes each)."""
    per_layer = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 3 * 8 * 16  # q, k, v (1 KV head of 4), o, gate/up/down: 576
    weights = 2 * per_layer + 8 * 10  # both layers and the LM head (vocab 10)
    k_and_v = 2 * (7 * 4 + 7 * 4)  # per layer: K and V of all 7 keys, kv_dim 4 each
    embed = 7 * 8  # the 7 tokens' embedding rows
    cached = 1 * 4 * (4 + 8 + 8)  # layer 1: the 4 response tokens' cached V, attention and FFN deltas
    all_rows, response_rows = 7 * 10, 4 * 10  # logits written
    expect = {
        "full": weights + k_and_v + embed + all_rows,
        "response": weights + k_and_v + embed + response_rows,
        "partial": weights + k_and_v + cached + embed + response_rows,  # int(4 * 0.5) = 2 selected in layer 1
        "prompt": weights + k_and_v + cached + embed + all_rows,
    }
    for kind, elements in expect.items():
        assert step_bytes(TOY, 1, P, R, kind, 0.5) == 2 * elements, kind
        assert step_bytes(TOY, 1, P, R, kind, 0.5, dtype_bytes=4) == 4 * elements, kind
    # batch 3: weights are read once, everything per token three times
    assert step_bytes(TOY, 3, P, R, "full", 0.5) == 2 * (weights + 3 * (k_and_v + embed + all_rows))
    assert expect["full"] == 1470  # the hand count itself, so a slip in the lines above shows
    # Nothing selected (int(4 * 0.1) = 0): layer 1 runs no V-verify and no attention; it reads only its
    # cached attention and FFN deltas. Layer 0 (always recomputed) reads its weights and K/V.
    idle = per_layer + 8 * 10 + 2 * (7 * 4) + embed + 1 * 4 * (8 + 8) + response_rows
    assert step_bytes(TOY, 1, P, R, "partial", 0.1) == 2 * idle
    prompt_idle = weights + k_and_v + embed + 1 * 4 * (8 + 8) + all_rows  # the prompt still runs every layer
    assert step_bytes(TOY, 1, P, R, "prompt", 0.1) == 2 * prompt_idle


def test_ratio_one_partial_equals_response():
    for dims in (TOY, ModelDims.from_config(llada_8b_config()), ModelDims.from_config(dream_7b_config())):
        assert step_flops(dims, 2, 700, 256, "partial", 1.0) == step_flops(dims, 2, 700, 256, "response")


@pytest.mark.parametrize("config_fn", [llada_8b_config, dream_7b_config])
@pytest.mark.parametrize("shape", [(700, 256), (4000, 32), (16, 16)])
def test_ordering_partial_response_full(config_fn, shape):
    dims = ModelDims.from_config(config_fn())
    p, r = shape
    f = {k: step_flops(dims, 1, p, r, k, 0.25) for k in FEATURE_KINDS}
    assert f["partial"] < f["response"] < f["full"]
    assert f["partial"] < f["prompt"] <= f["full"]
    b = {k: step_bytes(dims, 1, p, r, k, 0.25) for k in FEATURE_KINDS}
    # Batch 1: every kind reads all weights once (logits writes aside), so bytes barely move.
    assert max(b.values()) < 1.10 * min(b.values())
    roof = {k: roofline_seconds(f[k], b[k], 790, 3.0) for k in FEATURE_KINDS}
    assert roof["partial"] <= 1.01 * roof["full"] and roof["response"] <= 1.01 * roof["full"]
    # Batch 8 GSM8K shape: the full step is compute bound, the partial one memory bound.
    f8 = {k: step_flops(dims, 8, 700, 256, k, 0.25) for k in ("full", "partial")}
    b8 = {k: step_bytes(dims, 8, 700, 256, k, 0.25) for k in ("full", "partial")}
    assert f8["full"] / 790e12 > b8["full"] / 3e12
    assert roofline_seconds(f8["partial"], b8["partial"], 790, 3.0) < 0.5 * roofline_seconds(
        f8["full"], b8["full"], 790, 3.0
    )


def test_dims_from_both_config_styles():
    llada = ModelDims.from_config(llada_8b_config())
    assert llada == ModelDims(4096, 32, 32, 32, 128, 12288, 126464)
    dream = ModelDims.from_config(dream_7b_config())
    assert dream == ModelDims(3584, 28, 28, 4, 128, 18944, 152064, logit_shift=1)
    as_dict = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 3, "intermediate_size": 160, "vocab_size": 256}
    assert ModelDims.from_config(as_dict) == ModelDims(64, 3, 4, 2, 16, 160, 256)
    # LLaDA-8B: layers + LM head + input embedding = about 8.0B parameters.
    params = llada.n_layers * llada.params_layer + 2 * llada.params_lm_head
    assert 7.9e9 < params < 8.1e9
    with pytest.raises(ValueError, match="cannot read model dims"):
        ModelDims.from_config({"vocab_size": 3})


def test_bytes_weights_and_roofline():
    dims = ModelDims.from_config(llada_8b_config())
    weights = 2 * (dims.n_layers * dims.params_layer + dims.params_lm_head)
    nbytes = step_bytes(dims, 1, 700, 256, "partial", 0.25)
    assert weights < nbytes < weights * 1.2  # batch 1: weight reads dominate
    cost = generation_cost(dims, 1, 700, 256, 256, CacheConfig(), peak_tflops=790, peak_tbps=3.0)
    assert cost.roofline_s is not None and cost.roofline_s > cost.bytes / 3e12 * 0.99


# Step kinds written out by hand from the rule (step 0 full; prompt every Kp, response every Kr), so a
# schedule bug is not compared with itself: flops.step_kind delegates to schedule.step_kind.
F, Pa, Re, Pr = "full", "partial", "response", "prompt"
HAND_KINDS = {
    (100, 4): [F, Pa, Pa, Pa, Re, Pa, Pa, Pa, Re, Pa, Pa, Pa, Re, Pa],
    (6, 4): [F, Pa, Pa, Pa, Re, Pa, Pr, Pa, Re, Pa, Pa, Pa, F, Pa],
    (None, 3): [F, Pa, Pa, Re, Pa, Pa, Re, Pa, Pa, Re, Pa, Pa, Re, Pa],
    (1, 2): [F, Pr, F, Pr, F, Pr, F, Pr, F, Pr, F, Pr, F, Pr],
}


@pytest.mark.parametrize("kp,kr", sorted(HAND_KINDS, key=str))
def test_step_kinds_follow_the_rule_written_out(kp, kr):
    cfg = CacheConfig(prompt_interval=kp, response_interval=kr)
    assert [step_kind(s, cfg) for s in range(14)] == HAND_KINDS[kp, kr]
    assert [core_step_kind(s, cfg) for s in range(14)] == HAND_KINDS[kp, kr]
    # far from step 0: Kp=100 refreshes the prompt again at 100 (and 200), Kp=None never does
    assert step_kind(200, cfg) == ("full" if kp in (100, 1) else "response" if 200 % kr == 0 else "partial")


@pytest.mark.parametrize("kp,kr", [(6, 4), (None, 3)])
def test_step_kinds_are_the_ones_the_engine_runs(kp, kr):
    """The FLOPs model's kinds against the cache's own counters on a real cached run."""
    from tests.helpers import cached_steps, trajectory

    model = tiny_llada()
    cfg = CacheConfig(prompt_interval=kp, response_interval=kr)
    seqs, mask = trajectory(model, batch=2, prompt_len=6, resp_len=28, steps=14)
    kinds, _, _ = cached_steps(model, cfg, seqs, mask, 6)
    assert kinds == [step_kind(s, cfg) for s in range(14)] == HAND_KINDS[kp, kr]


def test_schedule_counts_and_generation_totals():
    cfg = CacheConfig(prompt_interval=100, response_interval=4, transfer_ratio=0.5)
    assert schedule_counts(10, cfg) == {"full": 1, "response": 2, "prompt": 0, "partial": 7}
    assert generation_flops(TOY, 1, P, R, 10, cfg) == FULL + 2 * RESPONSE + 7 * PARTIAL_HALF
    assert generation_flops(TOY, 1, P, R, 10, None) == 10 * FULL
    every_step = CacheConfig(prompt_interval=1, response_interval=1, transfer_ratio=1.0)
    assert generation_flops(TOY, 2, P, R, 10, every_step) == generation_flops(TOY, 2, P, R, 10, None)
    # Kp=6, Kr=4: step 6 refreshes the prompt only, step 12 is full again.
    counts = schedule_counts(13, CacheConfig(prompt_interval=6, response_interval=4))
    assert counts == {"full": 2, "response": 2, "prompt": 1, "partial": 8}


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream])
def test_full_step_matches_flop_counter(factory):
    model = factory()
    dims = ModelDims.from_config(model.config)
    ids = torch.randint(0, 200, (2, 24))
    measured = measure_step_flops(model, ids)
    analytic = step_flops(dims, 2, 16, 8, "full")
    assert abs(analytic - measured) <= 0.02 * measured
    assert analytic == measured  # same matmuls + attention counted: exact in fact


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream, lambda: tiny_llada(weight_tying=True)])
def test_cached_step_kinds_match_flop_counter(factory):
    """Every kind of cached forward runs exactly the matmuls the formula charges."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    batch, p, r = 2, 12, 8
    # A weight-tied LLaDA has no head module for the cache to patch: logits on every row.
    logits = p + r if getattr(model.config, "weight_tying", False) else None
    cfg = CacheConfig(prompt_interval=6, response_interval=4, transfer_ratio=0.25)
    ids = torch.randint(0, 200, (batch, p + r))
    ids[:, p:] = model.config.mask_token_id
    enable_cache(model, cfg)
    try:
        reset_cache(model, prompt_length=p)
        seen = set()
        for s, kind in enumerate(HAND_KINDS[6, 4][:8]):  # full, partial x3, response, partial, prompt, partial
            seen.add(kind)
            assert measure_step_flops(model, ids) == step_flops(dims, batch, p, r, kind, 0.25, logits), (s, kind)
            ids[:, p + s] = 7  # unmask one token per step
    finally:
        disable_cache(model)
    assert seen == set(FEATURE_KINDS)
