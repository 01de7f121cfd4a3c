"""The schedule and V-verify select what the config says."""

import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats
from dllm_cache.engine.schedule import plan_step
from dllm_cache.engine.v_verify import select_drifted, value_similarity
from tests.helpers import logits_along, trajectory


def test_plan_kinds():
    cfg = CacheConfig(prompt_interval=6, response_interval=4, transfer_ratio=0.5)
    kinds = [plan_step(s, cfg).kind for s in range(13)]
    assert kinds[0] == "full" and kinds[12] == "full"
    assert kinds[4] == "response" and kinds[8] == "response"
    assert kinds[6] == "prompt"
    assert kinds[1] == kinds[5] == "partial"


def test_select_picks_most_drifted_per_row():
    old = torch.randn(2, 2, 8, 4)
    new = old.clone()
    new[0, :, 3] = -old[0, :, 3]  # row 0: token 3 reversed
    new[0, :, 6] += 0.5 * torch.randn(2, 4)
    new[1, :, 0] = torch.randn(2, 4)
    new[1, :, 7] = -old[1, :, 7]
    idx = select_drifted(new, old, 2)  # int(8 * 0.25) = 2 per row
    assert idx.shape == (2, 2)
    assert set(idx[0].tolist()) == {3, 6}
    assert set(idx[1].tolist()) == {0, 7}
    sim = value_similarity(new, old)
    assert torch.allclose(sim[0, 0], torch.tensor(1.0))


def test_recomputed_fraction_matches_config(model):
    resp_len = 20
    seqs, mask = trajectory(model, batch=3, resp_len=resp_len, steps=9)
    n_layers = len(seqs) and model.config.num_hidden_layers
    for ratio in (0.1, 0.25, 0.5):
        with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=ratio)):
            logits_along(model, seqs, mask)
            stats = cache_stats(model)
        assert stats["full_steps"] == 1 and stats["response_refresh_steps"] == 1 and stats["partial_steps"] == 7
        per_row = int(resp_len * ratio)
        # partial steps x layers 1.. (layer 0 always refreshes) x rows
        assert stats["tokens_recomputed"] == 7 * (n_layers - 1) * 3 * per_row
        assert stats["tokens_total"] == 7 * (n_layers - 1) * 3 * resp_len
        assert abs(stats["recompute_fraction"] - per_row / resp_len) < 1e-9


def test_new_generation_detected_from_prompt_change(model):
    seqs, mask = trajectory(model, batch=2, seed=1)
    other, _ = trajectory(model, batch=2, seed=2)
    with cache_enabled(model, CacheConfig()):
        logits_along(model, seqs[:3], mask)
        ref = model(other[0], attention_mask=mask).logits  # new prompt -> full step, exact
        stats = cache_stats(model)
    assert stats["generations"] == 2 and stats["full_steps"] == 2
    assert torch.allclose(ref, model(other[0], attention_mask=mask).logits, atol=1e-5)
