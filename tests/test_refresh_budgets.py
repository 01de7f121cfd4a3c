"""Drift-triggered response refresh and per-layer budgets: exact when refreshed every step, they
recompute what they claim (counts, layers, refresh steps), odd values are clear errors, and the
analytic FLOPs count what the engine runs."""

import pytest
import torch

import dllm_cache.engine.drift as drift_module
import dllm_cache.engine.layer as layer_module
import dllm_cache.engine.step as step_module
from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache, is_cache_enabled, reset_cache
from dllm_cache.analysis.flops import ModelDims, generation_cost, measure_step_flops, schedule_counts, step_flops
from dllm_cache.engine.drift import plan_drift_step
from dllm_cache.engine.graphs import graphable
from dllm_cache.engine.layer_budget import ramp_ratios
from dllm_cache.engine.v_verify import select_drifted
from dllm_cache.hooks import adapter_for
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from tests.helpers import cached_steps, logits_along, max_err, trajectory

ATOL_FP32 = 1e-5


def _n_layers(model) -> int:
    return len(adapter_for(model).blocks(model))


def _every_step(model, name: str) -> CacheConfig:
    """Configs of the new options that leave nothing stale: prompt every step, and the response
    refreshed by drift (threshold 0: always) or recomputed in full on every layer (ratios 1)."""
    ones = (1.0,) * _n_layers(model)
    return {
        "drift0": CacheConfig(prompt_interval=1, response_interval=8, response_drift_threshold=0.0),
        "layers1": CacheConfig(prompt_interval=1, response_interval=8, layer_ratios=ones),
        "drift0_layers1_frontier": CacheConfig(prompt_interval=1, response_interval=8, response_drift_threshold=0.0,
                                               layer_ratios=ones, selection="frontier"),
        "layers1_shifted_row": CacheConfig(prompt_interval=1, response_interval=100, layer_ratios=ones,
                                              shifted_row="response"),
    }[name]


@pytest.mark.parametrize("name", ["drift0", "layers1", "drift0_layers1_frontier", "layers1_shifted_row"])
def test_new_options_reproduce_uncached_when_refreshed_every_step(model, name):
    seqs, mask = trajectory(model, batch=3, padded=True)
    ref = logits_along(model, seqs, mask)
    with cache_enabled(model, _every_step(model, name)):
        out = logits_along(model, seqs, mask)
        stats = cache_stats(model)
    assert max_err(out, ref) <= ATOL_FP32
    if name.startswith("drift0"):  # threshold 0: every step after the first is a drift-triggered refresh
        assert stats["drift_refreshes"] == len(seqs) - 1


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream])
def test_drift_refresh_exact_without_prompt(factory):
    """Response only (P = 0), drift-refreshed every step: nothing stale, so exact."""
    model = factory()
    seqs, mask = trajectory(model, batch=2, prompt_len=0, resp_len=16, padded=False)
    ref = logits_along(model, seqs, mask)
    with cache_enabled(model, CacheConfig(100, 4, response_drift_threshold=0.0)):
        reset_cache(model, prompt_length=0)
        out = logits_along(model, seqs, mask)
    assert max_err(out, ref) <= ATOL_FP32


def _recorded_counts(monkeypatch):
    """Wrap select_drifted inside the cached layer; record how many tokens each call picked."""
    counts = []

    def recording(v_new, v_old, k, priority=None, sim=None):
        idx = select_drifted(v_new, v_old, k, priority, sim)
        counts.append(idx.shape[1])
        return idx

    monkeypatch.setattr(layer_module, "select_drifted", recording)
    return counts


@pytest.mark.parametrize("ratios", [(1.0, 0.25, 0.75), (0.5, 0.75, 0.125), (0.0, 0.0, 0.5)])
def test_each_layer_recomputes_its_own_budget(monkeypatch, model, ratios):
    """Partial layer i picks int(R * ratios[i]) tokens (none at all with 0: no V-verify either);
    cache_stats counts exactly those."""
    assert _n_layers(model) == len(ratios)
    P, R, batch, steps = 10, 16, 2, 5
    seqs, mask = trajectory(model, batch=batch, prompt_len=P, resp_len=R, steps=steps, padded=False)
    counts = _recorded_counts(monkeypatch)
    with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=100, layer_ratios=ratios)):
        reset_cache(model, prompt_length=P)
        logits_along(model, seqs, mask)
        stats = cache_stats(model)
    expected = [int(R * r) for r in ratios[1:] if int(R * r)]  # layer 0 always recomputes all
    assert counts == expected * (steps - 1)  # steps 1.. are partial
    assert stats["tokens_recomputed"] == (steps - 1) * batch * sum(int(R * r) for r in ratios[1:])
    assert stats["tokens_total"] == (steps - 1) * batch * (len(ratios) - 1) * R


def test_layer_budgets_cap_at_the_frontier_window(monkeypatch):
    model = tiny_llada()
    P, R = 10, 16
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=4, padded=False)
    counts = _recorded_counts(monkeypatch)
    config = CacheConfig(100, 100, selection="frontier", frontier_only=True, layer_ratios=(1.0, 0.125, 0.75))
    with cache_enabled(model, config):
        reset_cache(model, prompt_length=P, block_length=4)
        logits_along(model, seqs, mask)
    assert counts == [2, 4] * 3  # int(16 * 0.125) = 2; int(16 * 0.75) = 12 capped at the block of 4


def test_drift_schedule_rule():
    """Refresh exactly when the previous step's drift reached the threshold, never sooner than the
    shortest interval, always by the longest; prompt refreshes keep their clock."""
    cfg = CacheConfig(prompt_interval=5, response_interval=6, response_drift_threshold=0.1, response_min_interval=2)
    plan, triggered = plan_drift_step(0, 0, 0.0, cfg, 6)
    assert plan.kind == "full" and not triggered
    assert plan_drift_step(3, 1, 0.9, cfg, 6)[0].kind == "partial"  # too soon, however large the drift
    assert plan_drift_step(3, 2, 0.09, cfg, 6)[0].kind == "partial"  # below the threshold
    plan, triggered = plan_drift_step(3, 2, 0.1, cfg, 6)
    assert plan.kind == "response" and triggered
    plan, triggered = plan_drift_step(7, 6, 0.0, cfg, 6)
    assert plan.kind == "response" and not triggered  # the longest interval, not the drift
    assert plan_drift_step(5, 3, 0.0, cfg, 6)[0].kind == "prompt"
    assert plan_drift_step(5, 3, 0.5, cfg, 6)[0].kind == "full"


def _drift_run(model, config, seqs, mask, P, monkeypatch):
    """Per step: (kind, drift measured by the step, drift-triggered?)."""
    measured = []
    real = drift_module.step_drift
    monkeypatch.setattr(step_module, "step_drift", lambda drifts: measured.append(real(drifts)) or measured[-1])
    kinds, pairs, _ = cached_steps(model, config, seqs, mask, P)
    triggered = [after["drift_refreshes"] > before["drift_refreshes"] for before, after in pairs]
    return kinds, measured, triggered


def test_drift_refresh_happens_exactly_when_the_drift_crosses(monkeypatch, model):
    P, R = 10, 16
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=8, padded=False)
    # a first run that never triggers gives the drifts partial steps see; a threshold among them
    never = CacheConfig(100, 100, 0.25, response_drift_threshold=2.0)
    _, drifts, _ = _drift_run(model, never, seqs, mask, P, monkeypatch)
    assert all(d > 0 for d in drifts[1:]) and drifts[0] == 0.0  # step 0 is a full refresh: no V-verify
    threshold = sorted(drifts[1:])[len(drifts) // 2]
    lo, hi = 2, 4
    config = CacheConfig(100, hi, 0.25, response_drift_threshold=threshold, response_min_interval=lo)
    kinds, drifts, triggered = _drift_run(model, config, seqs, mask, P, monkeypatch)
    assert len(drifts) == len(seqs)
    since = 0
    for step, kind in enumerate(kinds):
        refreshed = kind in ("full", "response")
        if step:
            since += 1
            by_drift = lo <= since < hi and drifts[step - 1] >= threshold
            assert refreshed == (by_drift or since >= hi), (step, since, drifts)
            assert triggered[step] == by_drift
            assert since <= hi  # always by the longest interval
        if refreshed:
            assert drifts[step] == 0.0  # a refresh measures no drift
            since = 0
    assert any(triggered)


def test_drift_config_runs_eagerly(monkeypatch):
    """The next step's plan waits on this step's drift: never captured as a CUDA graph."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    class OnCuda:
        is_cuda = True

    assert graphable(CacheConfig(), "partial", OnCuda(), None, False)
    assert not graphable(CacheConfig(response_drift_threshold=0.1), "partial", OnCuda(), None, False)
    with pytest.raises(ValueError, match="compile=True"):
        CacheConfig(response_drift_threshold=0.1, compile=True)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(layer_ratios=(0.5, 1.5, 0.2)), r"entries must be numbers in \[0, 1\].*1\.5"),
        (dict(layer_ratios=(0.5, -0.1, 0.2)), r"entries must be numbers in \[0, 1\]"),
        (dict(layer_ratios=(0.5, True, 0.2)), r"entries must be numbers"),
        (dict(layer_ratios=()), "non-empty sequence"),
        (dict(layer_ratios="0.5"), "non-empty sequence"),
        (dict(layer_ratios=0.5), "non-empty sequence"),
        (dict(response_drift_threshold=-0.1), r"response_drift_threshold must be a number in \[0, 2\]"),
        (dict(response_drift_threshold=2.5), r"response_drift_threshold must be a number in \[0, 2\]"),
        (dict(response_drift_threshold=float("nan")), r"response_drift_threshold must be a number"),
        (dict(response_drift_threshold=True), r"response_drift_threshold must be a number"),
        (dict(response_drift_threshold=0.1, response_min_interval=9), "exceeds the longest interval 8"),
        (dict(response_drift_threshold=0.1, response_min_interval=3, cfg_interval=2), "exceeds the longest interval 2"),
        (dict(response_drift_threshold=0.1, response_min_interval=0), "response_min_interval must be an integer >= 1"),
        (dict(response_min_interval=2), "applies only with response_drift_threshold"),
        (dict(response_drift_threshold=0.1, transfer_ratio=0.0), "needs V-verify to measure drift"),
        (dict(response_drift_threshold=0.1, layer_ratios=(1.0, 0.0, 0.0)), "needs V-verify to measure drift"),
        (dict(response_drift_threshold=0.1, policy="block-dual"), "policy='feature' only"),
        (dict(layer_ratios=(0.5,) * 3, policy="block-prefix"), "layer_ratios"),
    ],
)
def test_odd_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig(**kwargs)


def test_layer_ratios_of_the_wrong_length_change_nothing():
    model = tiny_llada()
    with pytest.raises(ValueError, match="has 2 entries but the model has 3 layers"):
        enable_cache(model, CacheConfig(layer_ratios=(0.5, 0.5)))
    assert not is_cache_enabled(model)
    enable_cache(model, CacheConfig(response_interval=4))
    with pytest.raises(ValueError, match="has 4 entries"):
        enable_cache(model, CacheConfig(layer_ratios=(0.5,) * 4))
    assert cache_stats(model)["steps"] == 0 and is_cache_enabled(model)  # the previous cache stays
    disable_cache(model)
    assert CacheConfig(layer_ratios=[0.5, 0.25, 1]).layer_ratios == (0.5, 0.25, 1.0)  # a hashable tuple


def test_ramp_ratios():
    r = ramp_ratios(5, 0.25, 0.5)
    assert len(r) == 5 and r[0] == 0.25
    assert r[1:] == pytest.approx((0.125, 0.2083333, 0.2916667, 0.375))
    assert sum(r[1:]) / 4 == pytest.approx(0.25)  # the same mean budget
    assert ramp_ratios(3, 0.25, 0.0) == (0.25,) * 3
    assert ramp_ratios(2, 0.3) == (0.3, 0.3)
    with pytest.raises(ValueError, match="outside"):
        ramp_ratios(4, 0.8, 0.5)
    with pytest.raises(ValueError, match="spread"):
        ramp_ratios(4, 0.2, 1.5)
    with pytest.raises(ValueError, match="n_layers"):
        ramp_ratios(0, 0.2)


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream])
def test_layer_budget_steps_match_flop_counter(factory):
    """Partial and prompt-refresh steps with per-layer budgets run exactly the matmuls charged."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    batch, p, r = 2, 12, 8
    cfg = CacheConfig(prompt_interval=3, response_interval=100, layer_ratios=(0.5, 0.25, 0.75))
    selected = cfg.layer_counts(r, dims.n_layers)
    assert selected == (4, 2, 6)
    ids = torch.randint(0, 200, (batch, p + r))
    ids[:, p:] = model.config.mask_token_id
    enable_cache(model, cfg)
    try:
        reset_cache(model, prompt_length=p)
        for s, kind in enumerate(["full", "partial", "partial", "prompt", "partial"]):
            assert measure_step_flops(model, ids) == step_flops(dims, batch, p, r, kind, selected=selected), (s, kind)
            ids[:, p + s] = 7
    finally:
        disable_cache(model)
    # generation totals use the same per-layer counts
    uniform = CacheConfig(prompt_interval=3, response_interval=100, transfer_ratio=0.5)
    cost = generation_cost(dims, batch, p, r, 5, cfg).flops
    assert cost == sum(step_flops(dims, batch, p, r, k, selected=selected) * n
                       for k, n in schedule_counts(5, cfg).items())
    assert cost == generation_cost(dims, batch, p, r, 5, uniform).flops  # 2 + 6 tokens = 2 x 4: the same budget
    assert cost > generation_cost(dims, batch, p, r, 5, CacheConfig(3, 100, 0.25)).flops


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream])
def test_drift_generation_flops_match_flop_counter(factory, monkeypatch):
    """A drift-refreshed run: each step costs what its kind costs, and generation_cost over the
    step counts cache_stats reports equals the FLOPs counted."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    P, R = 10, 16
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=8, padded=False)
    config = CacheConfig(100, 5, 0.25, response_drift_threshold=0.0, response_min_interval=3)
    measured = 0
    with cache_enabled(model, config):
        reset_cache(model, prompt_length=P)
        for s in seqs:
            measured += measure_step_flops(model, s)
        stats = cache_stats(model)
    assert stats["drift_refreshes"] == 2  # steps 3 and 6
    counts = {"full": stats["full_steps"], "response": stats["response_refresh_steps"],
              "prompt": stats["prompt_refresh_steps"], "partial": stats["partial_steps"]}
    assert counts == {"full": 1, "response": 2, "prompt": 0, "partial": 5}
    assert generation_cost(dims, 2, P, R, len(seqs), config, step_counts=counts).flops == measured
    with pytest.raises(ValueError, match="step_counts"):
        generation_cost(dims, 2, P, R, len(seqs), config)
