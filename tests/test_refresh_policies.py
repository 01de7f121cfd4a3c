"""Refresh policies beyond the paper: each recomputes what it claims (counts and positions), and
every policy still reproduces the uncached logits when refreshed every step."""

import pytest
import torch

import dllm_cache.engine.layer as layer_module
from dllm_cache import CacheConfig, cache_enabled, cache_stats, reset_cache
from dllm_cache.analysis.flops import ModelDims, generation_cost
from dllm_cache.engine.frontier import decoding_window, frontier_priority
from dllm_cache.engine.schedule import plan_step
from dllm_cache.engine.v_verify import select_drifted
from tests.helpers import logits_along, max_err, trajectory

M = 99  # mask id in the unit tests below


def test_priority_tokens_are_picked_first_by_drift():
    old = torch.randn(1, 2, 8, 4)
    new = old.clone()
    new[0, :, 1] = -old[0, :, 1]  # most drifted, but not a priority token
    new[0, :, 5] += 0.3 * torch.randn(2, 4)  # drifted a little, priority
    priority = torch.zeros(1, 8, dtype=torch.int8)
    priority[0, [4, 5, 6]] = 2
    priority[0, 7] = 1
    assert select_drifted(new, old, 1, priority).tolist() == [[5]]  # the most drifted top-level token
    assert select_drifted(new, old, 3, priority).tolist() == [[4, 5, 6]]
    assert select_drifted(new, old, 4, priority).tolist() == [[4, 5, 6, 7]]  # then the next level
    assert select_drifted(new, old, 5, priority).tolist() == [[1, 4, 5, 6, 7]]  # then V-verify fills
    assert select_drifted(new, old, 1).tolist() == [[1]]  # paper: drift alone


def test_decoding_window_block_aligned_and_free():
    tokens = torch.tensor([
        [5, 5, 5, 5, 5, M, 5, M],  # first mask at 5: block [4, 8)
        [5, 5, M, M, M, M, M, M],  # first mask at 2: block [0, 4)
        [5, 5, 5, 5, 5, 5, 5, 5],  # nothing masked: empty window
    ])  # fmt: skip
    aligned = decoding_window(tokens, M, 4, block_aligned=True)
    assert aligned[0].nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert aligned[1].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert not aligned[2].any()
    free = decoding_window(tokens, M, 3, block_aligned=False)
    assert free[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert free[1].nonzero().flatten().tolist() == [2, 3, 4]
    # nothing generated (a forward on the prompt alone): an empty window, not an error
    assert decoding_window(tokens[:, :0], M, 4, block_aligned=True).shape == (3, 0)


def test_frontier_priority_marks_window_recent_and_predicting_rows():
    tokens = torch.tensor([[7, 8, M, M, M, M]])
    at_refresh = torch.tensor([[M, 8, M, M, M, M]])  # token 0 unmasked since the last refresh
    llada = frontier_priority(tokens, at_refresh, M, 2, True, row_offset=0, logit_shift=0)
    assert llada[0].tolist() == [1, 0, 2, 2, 0, 0]  # recent 0, window [2, 4) first
    # Dream, last prompt row cached with the prompt: rows predicting tokens 2, 3 are rows 1, 2
    dream = frontier_priority(tokens, at_refresh, M, 2, True, row_offset=0, logit_shift=1)
    assert dream[0].tolist() == [1, 2, 2, 2, 0, 0]
    # Dream, last prompt row cached with the response (row 0 = prompt row P-1): window tokens
    # 2, 3 sit in rows 3, 4 and are predicted from rows 2, 3; the recent token 0 sits in row 1
    shifted = frontier_priority(tokens, at_refresh, M, 2, True, row_offset=1, logit_shift=1)
    assert shifted.shape == (1, 7)
    assert shifted[0].tolist() == [0, 1, 2, 2, 2, 0, 0]
    # with the first token masked, the shifted row P-1 (row 0) predicts it and is marked
    first = frontier_priority(torch.full((1, 6), M), None, M, 2, True, row_offset=1, logit_shift=1)
    assert first[0].tolist() == [2, 2, 2, 0, 0, 0, 0]


def test_no_prompt_refresh_schedule():
    cfg = CacheConfig(prompt_interval=None, response_interval=4)
    kinds = [plan_step(s, cfg).kind for s in range(10)]
    assert kinds == ["full", "partial", "partial", "partial", "response", "partial", "partial", "partial",
                     "response", "partial"]


POLICIES = {
    "frontier": dict(selection="frontier"),
    "frontier_only": dict(selection="frontier", frontier_only=True, frontier_window=4),
    "shifted_response": dict(shifted_row="response"),
    "frontier_shifted": dict(selection="frontier", shifted_row="response"),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("refresh", ["kr1", "ratio1"])
def test_every_policy_reproduces_uncached_when_refreshed_every_step(model, policy, refresh):
    kw = dict(response_interval=1) if refresh == "kr1" else dict(response_interval=8, transfer_ratio=1.0)
    if refresh == "ratio1" and POLICIES[policy].get("frontier_only"):
        kw["frontier_window"] = 64  # the window then covers every response token
    config = CacheConfig(prompt_interval=1, **{**POLICIES[policy], **kw})
    seqs, mask = trajectory(model, batch=3, padded=True)
    ref = logits_along(model, seqs, mask)
    with cache_enabled(model, config):
        out = logits_along(model, seqs, mask)
    assert max_err(out, ref) <= 1e-5


def _recorded_selections(monkeypatch):
    """Wrap select_drifted inside the cached layer and record what every partial layer picked."""
    picked = []

    def recording(v_new, v_old, k, priority=None, sim=None):
        idx = select_drifted(v_new, v_old, k, priority, sim)
        picked.append((idx.clone(), None if priority is None else priority.clone()))
        return idx

    monkeypatch.setattr(layer_module, "select_drifted", recording)
    return picked


def test_frontier_recomputes_the_current_block_first(monkeypatch, model):
    """LLaDA-style blocks of 4 over a 16-token response; 2 tokens unmasked per step. Every partial
    layer must pick the current block (the one holding the first masked token) before anything else."""
    P, R = 10, 16
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=6, padded=False)
    picked = _recorded_selections(monkeypatch)
    config = CacheConfig(prompt_interval=100, response_interval=100, transfer_ratio=0.5, selection="frontier")
    with cache_enabled(model, config):
        reset_cache(model, prompt_length=P, block_length=4)
        logits_along(model, seqs, mask)
        stats = cache_stats(model)
    n_layers = len(picked) // (len(seqs) - 1)
    assert n_layers >= 2 and len(picked) == (len(seqs) - 1) * n_layers  # layers 1.. of steps 1..5
    for step, seq in enumerate(seqs[1:], start=1):
        first_masked = int((seq[0, P:] == model.config.mask_token_id).nonzero()[0])
        block = set(range(first_masked // 4 * 4, first_masked // 4 * 4 + 4))
        recent = set(range(0, 2 * step))  # unmasked since step 0 (the last response refresh)
        for idx, _ in picked[(step - 1) * n_layers : step * n_layers]:
            chosen = set(idx[0].tolist())
            assert len(chosen) == R // 2  # int(16 * 0.5): the budget is filled
            assert block <= chosen, (step, block, chosen)
            assert len(block | recent) > R // 2 or (block | recent) <= chosen
    assert stats["tokens_recomputed"] == 5 * n_layers * 2 * (R // 2)


def test_frontier_only_caps_the_budget_at_the_window(monkeypatch, model, family):
    P, R = 10, 16
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=5, padded=False)
    picked = _recorded_selections(monkeypatch)
    config = CacheConfig(prompt_interval=100, response_interval=100, transfer_ratio=0.5, selection="frontier",
                         frontier_only=True)
    with cache_enabled(model, config):
        reset_cache(model, prompt_length=P, block_length=4)
        logits_along(model, seqs, mask)
        stats = cache_stats(model)
    assert picked and all(idx.shape == (2, 4) for idx, _ in picked)  # min(int(16 * 0.5), block 4)
    n_layers = len(picked) // 4
    assert stats["tokens_recomputed"] == 4 * n_layers * 2 * 4
    assert stats["recompute_fraction"] == pytest.approx(4 / 16)
    # the analytic FLOPs count the same capped budget
    dims = ModelDims.from_config(model.config)
    capped = generation_cost(dims, 1, P, R, 8, config, block_length=4).flops
    paper = generation_cost(dims, 1, P, R, 8, CacheConfig(100, 100, 0.5), block_length=4).flops
    assert capped < paper


def test_ratio_zero_computes_nothing_on_partial_layers(monkeypatch, model):
    seqs, mask = trajectory(model, batch=2, steps=4)
    calls = []
    monkeypatch.setattr(layer_module, "select_drifted", lambda *a, **k: calls.append(1))
    with cache_enabled(model, CacheConfig(transfer_ratio=0.0)):
        logits_along(model, seqs, mask)
        assert cache_stats(model)["tokens_recomputed"] == 0
    assert not calls  # no drift test at all: no V projected for it


def test_shifted_row_response_keeps_the_first_token_row_fresh(family):
    """Dream's row P-1 predicts the first response token. Cached with the prompt (paper), its logits
    stay those of the last prompt refresh; cached with the response, they follow the response."""
    from tests.conftest import FACTORIES

    model = FACTORIES[family]()
    P = 10
    seqs, mask = trajectory(model, batch=2, prompt_len=P, steps=4, padded=False)
    rows = {}
    for where in ("prompt", "response"):
        with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=1, shifted_row=where)):
            out = logits_along(model, seqs, mask)
        rows[where] = [o[:, P - 1] for o in out]
    ref = [o[:, P - 1] for o in logits_along(model, seqs, mask)]
    if family == "dream":
        assert max_err(rows["prompt"][1:], [rows["prompt"][0]] * 3) == 0  # served from step 0
        assert max_err(rows["prompt"][3:], ref[3:]) > 1e-4
        # refreshed with the response every step (Kr = 1): only the prompt rows' features are stale
        assert max_err(rows["response"][3:], ref[3:]) < max_err(rows["prompt"][3:], ref[3:])
    else:  # no effect on unshifted models
        assert max_err(rows["response"], rows["prompt"]) == 0
