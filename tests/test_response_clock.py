"""CacheConfig.response_clock="tokens" (opt-in): the response is refreshed once the rows have
committed Kr tokens each on average since the last response refresh, or after Kr steps. The oracle cases
(the refresh steps and every logit, with a threshold sampler) are in tests/test_oracle_cache.py; here:
it is the step clock at one token per step, the planner (analysis.flops, the bench) plans as the engine
runs, under FlopCounterMode, it reads no more from the device than the step clock, and its config rules."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dllm_cache import CacheConfig, cache_enabled, cache_stats
from dllm_cache.analysis.flops import ModelDims, _extra_flop_formulas, feature_kinds, generation_cost
from dllm_cache.bench.decoding import run_kinds
from dllm_cache.engine.drift import plan_drift_step
from dllm_cache.engine.schedule import feature_plans
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import ReplaySchedule, committed_per_step

P, R, B = 10, 32, 8
# Two rows decoding at different rates (a replayed trace: per block, the tokens each step unmasks).
ROWS = [
    {"blocks": [[3, 3, 2], [4, 4], [2, 2, 2, 2], [8]], "stopped": False},
    {"blocks": [[1, 1, 1, 1, 1, 1, 1, 1], [2, 2, 2, 2], [5, 3], [4, 4]], "stopped": False},
]
ONE_PER_STEP = [{"blocks": [[1] * B for _ in range(R // B)], "stopped": False}] * 2
KINDS = ("full", "response", "prompt", "partial")
STAT = {"full": "full_steps", "response": "response_refresh_steps", "prompt": "prompt_refresh_steps",
        "partial": "partial_steps"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


def _prompt(model) -> torch.Tensor:
    return torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(3))


def _replay(model, config, rows, counter=None):
    """(output, per-step logits, stats) of a cached generation replaying `rows`."""
    logits = []
    handle = model.register_forward_hook(lambda m, a, kw, out: logits.append(out.logits.clone()), with_kwargs=True)
    try:
        with cache_enabled(model, config):
            with counter or torch.no_grad():
                out = generate(model, _prompt(model), gen_length=R, block_length=B, steps=R,
                               schedule=ReplaySchedule(rows, R, B))
            stats = cache_stats(model)
    finally:
        handle.remove()
    return out, logits, stats


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_one_token_per_step_is_the_step_clock(factory):
    """At one token per step the token clock refreshes on exactly the step clock's steps: same logits."""
    model = factory()
    config = CacheConfig(response_interval=4, prompt_interval=6, response_clock="tokens")
    out_t, logits_t, stats_t = _replay(model, config, ONE_PER_STEP)
    out_s, logits_s, stats_s = _replay(model, CacheConfig(response_interval=4, prompt_interval=6,
                                                          response_clock="steps"), ONE_PER_STEP)
    assert torch.equal(out_t, out_s) and len(logits_t) == len(logits_s) == R
    assert all(torch.equal(a, b) for a, b in zip(logits_t, logits_s))
    assert {k: stats_t[v] for k, v in STAT.items()} == {k: stats_s[v] for k, v in STAT.items()}
    assert stats_t["response_refresh_steps"] + stats_t["full_steps"] == R // 4


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_flops_and_kinds_are_planned_as_the_engine_runs(factory):
    """Several tokens per step, two rows at different rates: the engine's step kinds are those
    feature_kinds / the bench's run_kinds plan from the replay's counts (the batch rule: the mean over
    rows), and FlopCounterMode over the generation equals generation_cost(committed=...)."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    config = CacheConfig(response_interval=4, prompt_interval=7, response_clock="tokens")
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    _, logits, stats = _replay(model, config, ROWS, counter)
    committed = committed_per_step(ROWS, R // B)
    steps = len(committed)
    assert len(logits) == steps == 8 + 4 + 4 + 2  # each block as long as its slower row
    kinds = feature_kinds(steps, config, committed)
    assert {k: kinds.count(k) for k in KINDS} == {k: stats[v] for k, v in STAT.items()}
    assert run_kinds(config, P, R, steps, B, [8, 4, 4, 2], dims.logit_shift, committed) == kinds
    # the rows commit (3 + 1) + (3 + 1) = 4 each on average by step 2 (the step clock: step 4); then the step clock
    assert kinds[:8] == ["full", "partial", "response", "partial", "partial", "partial", "response", "prompt"]
    cost = generation_cost(dims, 2, P, R, steps, config, B, logits_tokens=B, committed=committed)
    if dims.logit_shift == 0:  # Dream's first block asks for prompt row P - 1, served from cache: B - 1 head rows
        assert int(counter.get_total_flops()) == cost.flops
    step_clock = generation_cost(dims, 2, P, R, steps, config, B, logits_tokens=B)
    assert cost.flops > step_clock.flops and cost.step_counts["partial"] < step_clock.step_counts["partial"]


def test_the_planner_counts_each_row_and_resets_on_refresh():
    config = CacheConfig(response_interval=4, prompt_interval=None, response_clock="tokens")
    # committed[s]: reported after step s. The rows' mean reaches 4 after step 0 (5, 3) and after step 3
    # (1 + 0 + 2, 1 + 0 + 4 since the refresh at step 1: 3 and 5); else the step clock (step 8).
    committed = [[5, 3], [1, 1], [0, 0], [2, 4], [3, 3], [0, 0], [0, 0], [0, 0], [0, 0]]
    kinds = [p.kind for p in feature_plans(config, 9, committed)]
    assert kinds == ["full", "response", "partial", "partial", "response", "partial", "partial", "partial", "response"]
    # the batch rule is the mean over rows: one row far ahead does not refresh the batch alone
    assert [p.kind for p in feature_plans(config, 3, [[6, 0], [0, 0], [0, 0]])] == ["full", "partial", "partial"]
    assert [p.kind for p in feature_plans(config, 3, [[6, 2], [0, 0], [0, 0]])] == ["full", "response", "partial"]
    steps_clock = CacheConfig(response_interval=4, prompt_interval=None, response_clock="steps")
    assert [p.kind for p in feature_plans(steps_clock, 9, committed)] == [
        "full", "partial", "partial", "partial", "response", "partial", "partial", "partial", "response"]


def test_threshold_decoding_reads_the_device_no_more_than_the_step_clock(monkeypatch):
    """The counts ride on the one read a threshold step already makes: the same number of host reads
    per generation as with the step clock."""
    model = tiny_llada()
    reads = {"n": 0}
    for name in ("tolist", "item", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            reads["n"] += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)
    per_clock = {}
    for clock in ("tokens", "steps"):
        reads["n"] = 0
        with cache_enabled(model, CacheConfig(response_interval=3, response_clock=clock)):
            generate(model, _prompt(model), gen_length=R, block_length=B, steps=R, threshold=0.05)
            stats = cache_stats(model)
        per_clock[clock] = (reads["n"], stats["steps"], stats["response_refresh_steps"])
    (reads_t, steps_t, refresh_t), (reads_s, steps_s, refresh_s) = per_clock["tokens"], per_clock["steps"]
    assert refresh_t > refresh_s  # the token clock fired (several tokens per step at this threshold)
    assert reads_t - steps_t == reads_s - steps_s  # one read per step either way, nothing more


def test_drift_trigger_keeps_the_token_clock_as_its_longest_interval():
    config = CacheConfig(response_interval=8, response_drift_threshold=0.5, response_min_interval=2,
                         response_clock="tokens")
    plan, triggered = plan_drift_step(3, 3, 0.0, config, 8, committed=8)
    assert plan.refresh_response and not triggered
    plan, _ = plan_drift_step(3, 3, 0.0, config, 8, committed=7)
    assert not plan.refresh_response


def test_config_rules():
    with pytest.raises(ValueError, match="response_clock must be one of"):
        CacheConfig(response_clock="token")
    with pytest.raises(ValueError, match="response_clock"):
        CacheConfig(policy="block-dual", response_clock="tokens")
    assert CacheConfig(response_clock="tokens").counts_tokens and not CacheConfig().counts_tokens
    assert not CacheConfig(policy="block-dual").counts_tokens
