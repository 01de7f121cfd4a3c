"""The per-step drift the cache keeps (cache_stats()["drift"], measure_drift) is the drift that plans
the refreshes, costs nothing unless asked for on fixed schedules, and eval.tiny.drift_profile turns
it into percentiles and thresholds whose predicted schedule is the one the library runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dllm_cache.engine.step as step_module
from dllm_cache import CacheConfig, cache_branch, cache_enabled, cache_stats, enable_cache, measure_drift
from dllm_cache.engine.drift import DriftTrace
from dllm_cache.models.tiny import tiny_llada
from dllm_cache.sampling.generate import generate
from tests.helpers import cached_steps, logits_along, trajectory

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.tiny import drift_profile  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests


def _kinds_and_trace(model, config, seqs, mask, P):
    """Each step's kind (from the cache_stats counters) and the drift trace the run kept."""
    kinds, _, stats = cached_steps(model, config, seqs, mask, P)
    return kinds, stats


def test_recorded_drift_is_what_triggers_the_refreshes():
    model = tiny_llada()
    P, R = 10, 24
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=12, padded=False)
    never = CacheConfig(100, 100, 0.25, response_drift_threshold=2.0)  # measures every step, triggers nothing
    _, stats = _kinds_and_trace(model, never, seqs, mask, P)
    drifts = stats["drift"]["cond"]["drift"]
    assert len(drifts) == len(seqs) - 1 and all(d > 0 for d in drifts)  # every step but the first measured one
    threshold = float(np.median(drifts))
    lo, hi = 2, 5
    config = CacheConfig(100, hi, 0.25, response_drift_threshold=threshold, response_min_interval=lo)
    kinds, stats = _kinds_and_trace(model, config, seqs, mask, P)
    trace = stats["drift"]["cond"]
    refreshed = [k in ("full", "response") for k in kinds]
    # the trace holds exactly the steps that did not refresh the response, with the steps since the last refresh
    assert trace["step"] == [s for s, r in enumerate(refreshed) if not r]
    last = 0
    for step, since in zip(trace["step"], trace["since_refresh"]):
        last = max(s for s in range(step) if refreshed[s])
        assert since == step - last
    # a step refreshes exactly when the previous step's recorded drift crossed the threshold (within the
    # intervals) or the longest interval ran out; the drift-triggered ones are counted
    recorded = dict(zip(trace["step"], zip(trace["since_refresh"], trace["drift"])))
    triggered = 0
    for step in range(1, len(seqs)):
        since, drift = recorded.get(step - 1, (0, 0.0))  # a refresh step measures no drift
        by_drift = lo <= since + 1 < hi and drift >= threshold
        assert refreshed[step] == (by_drift or since + 1 >= hi), (step, since, drift)
        triggered += by_drift
    assert stats["drift_refreshes"] == triggered > 0
    assert any(not r for r in refreshed[1:]) and trace["dropped"] == 0


def test_measure_drift_on_a_fixed_schedule():
    """Inside measure_drift a fixed schedule keeps the same drift a drift-triggered config with the
    same refresh steps would (one that never triggers, longest interval Kr); outputs do not change;
    outside it nothing is measured."""
    model = tiny_llada()
    P, Kr = 10, 4
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=20, steps=10, padded=True)
    fixed = CacheConfig(prompt_interval=6, response_interval=Kr, transfer_ratio=0.25)
    with cache_enabled(model, fixed):
        plain = logits_along(model, seqs, mask)
        assert "drift" not in cache_stats(model, reset=True)  # not measured by default
        with measure_drift(model):
            measured = logits_along(model, seqs, mask)
            stats = cache_stats(model, reset=True)
        logits_along(model, seqs, mask)
        assert "drift" not in cache_stats(model)  # off again after the block
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))
    trace = stats["drift"]["cond"]
    assert trace["step"] == [s for s in range(len(seqs)) if s % Kr]  # prompt refreshes (step 6) measure too
    assert trace["since_refresh"] == [s % Kr for s in trace["step"]]
    triggered = CacheConfig(prompt_interval=6, response_interval=Kr, transfer_ratio=0.25, response_drift_threshold=2.0)
    with cache_enabled(model, triggered):
        logits_along(model, seqs, mask)
        reference = cache_stats(model)["drift"]["cond"]
    assert reference["step"] == trace["step"]
    assert trace["drift"] == pytest.approx(reference["drift"], rel=1e-5, abs=1e-7)


def test_measure_drift_keeps_branches_apart_and_runs_eagerly(monkeypatch):
    model = tiny_llada()
    seqs, mask = trajectory(model, batch=1, prompt_len=6, resp_len=8, steps=3, padded=False)
    seen = []
    real = step_module.graphable
    monkeypatch.setattr(step_module, "graphable", lambda *a: seen.append(a[-1]) or real(*a))
    with cache_enabled(model, CacheConfig(response_interval=8)):
        model(seqs[0], attention_mask=mask)
        with measure_drift(model):
            for s in seqs[1:]:
                model(s, attention_mask=mask)
            with cache_branch(model, "uncond"):
                for s in seqs:
                    model(s, attention_mask=mask)
        model(seqs[-1], attention_mask=mask)
        drift = cache_stats(model)["drift"]
    assert seen == [False] + [True] * (len(seqs) - 1 + len(seqs)) + [False]  # no CUDA graph replay while measuring
    assert drift["cond"]["step"] == [1, 2] and drift["uncond"]["step"] == [1, 2]


@pytest.mark.parametrize("config,message", [
    (CacheConfig(policy="block-dual"), "policy='feature'"),
    (CacheConfig(compile=True), "compile=True"),
    (CacheConfig(transfer_ratio=0.0), "recompute nothing"),
])
def test_measure_drift_refuses_what_cannot_measure(config, message):
    model = tiny_llada()
    enable_cache(model, config)
    with pytest.raises(ValueError, match=message):
        with measure_drift(model):
            pass
    with pytest.raises(ValueError, match="no dllm-cache enabled"):
        with measure_drift(tiny_llada()):
            pass


def test_trace_is_bounded_and_reset_with_the_stats():
    trace = DriftTrace(limit=3)
    for i in range(5):
        trace.add(i, i % 2 + 1, 0.1 * i)
    kept = trace.as_dict()
    assert (kept["step"], kept["since_refresh"], kept["dropped"]) == ([2, 3, 4], [1, 2, 1], 2)
    assert kept["drift"] == pytest.approx([0.2, 0.3, 0.4])
    model = tiny_llada()
    seqs, mask = trajectory(model, batch=1, steps=3, padded=False)
    with cache_enabled(model, CacheConfig(response_drift_threshold=0.5)):
        logits_along(model, seqs, mask)
        assert len(cache_stats(model, reset=True)["drift"]["cond"]["drift"]) == 2
        assert "drift" not in cache_stats(model)


def test_batch_drift_is_the_mean_of_each_rows_drift():
    """What the profile's batch-mean view rests on: on a fixed schedule, a batch's drift at each step
    is the mean of the drift each of its prompts shows when generated alone."""
    model = tiny_llada()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 200, (1, n), generator=g) for n in (9, 14, 11)]
    batch = torch.full((len(prompts), 14), model.config.pad_token_id)
    mask = torch.zeros_like(batch)
    for i, p in enumerate(prompts):
        batch[i, -p.shape[1]:], mask[i, -p.shape[1]:] = p[0], 1
    kw = dict(gen_length=16, steps=16, block_length=8)
    traces = []
    with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=8)), measure_drift(model):
        for p in prompts:
            generate(model, p, **kw)
            traces.append(cache_stats(model, reset=True)["drift"]["cond"])
        generate(model, batch, mask, **kw)
        together = cache_stats(model)["drift"]["cond"]
    mean = drift_profile.batch_mean_trace(traces)
    assert together["step"] == mean["step"] and together["since_refresh"] == mean["since_refresh"]
    assert together["drift"] == pytest.approx(mean["drift"], rel=1e-4, abs=1e-7)


# ----------------------------------------------------------------------------- the analysis
@pytest.mark.parametrize("lo,hi", [(2, 5), (1, 3), (3, 8)])
def test_replay_reproduces_the_refreshes_of_a_drift_triggered_run(lo, hi):
    """Replaying a drift-triggered run's own recorded drift through the profile's replay gives the
    refreshes the run made: the replay is the rule the cache runs, off-by-ones included."""
    model = tiny_llada()
    P, R = 10, 24
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=12, padded=False)
    _, stats = _kinds_and_trace(model, CacheConfig(100, 100, 0.25, response_drift_threshold=2.0), seqs, mask, P)
    threshold = float(np.median(stats["drift"]["cond"]["drift"]))
    config = CacheConfig(100, hi, 0.25, response_drift_threshold=threshold, response_min_interval=lo)
    _, stats = _kinds_and_trace(model, config, seqs, mask, P)
    drift = drift_profile.drift_by_step(stats["drift"]["cond"], len(seqs))
    assert drift_profile.replay_refreshes(drift, config) == stats["full_steps"] + stats["response_refresh_steps"]
    assert stats["drift_refreshes"] > 0


def test_replay_edges_and_the_steps_the_fixed_schedule_refreshed():
    trace = {"step": [1, 2, 3, 5], "since_refresh": [1, 2, 3, 1], "drift": [0.1, 0.2, 0.3, 0.5]}
    assert drift_profile.drift_by_step(trace, 7).tolist() == [0.0, 0.1, 0.2, 0.3, 0.3, 0.5, 0.5]  # 4, 6 refreshed
    drift = np.full(33, 0.01)
    never = CacheConfig(response_interval=16, response_min_interval=2, response_drift_threshold=2.0)
    assert drift_profile.replay_refreshes(drift, never) == 3  # steps 0, 16, 32
    always = CacheConfig(response_interval=16, response_min_interval=3, response_drift_threshold=0.0)
    assert drift_profile.replay_refreshes(drift, always) == 11  # every 3 steps
    assert drift_profile.steps_per_refresh([drift[:32], drift[:16]], never) == 48 / 3


def test_thresholds_hit_their_targets_and_say_when_they_cannot():
    rng = np.random.default_rng(1)
    series = [rng.lognormal(np.log(0.01), 1.0, 256) for _ in range(4)]
    rows = [drift_profile.threshold_for(series, t, 2, 16) for t in (4, 8, 12)]
    assert rows[0]["threshold"] < rows[1]["threshold"] < rows[2]["threshold"]
    for row in rows:
        assert row["predicted_steps_per_refresh"] == pytest.approx(row["target"], rel=0.1)
        config = CacheConfig(response_interval=16, response_min_interval=2, response_drift_threshold=row["threshold"])
        assert drift_profile.steps_per_refresh(series, config) == pytest.approx(row["predicted_steps_per_refresh"],
                                                                                abs=1e-3)
    for target in (1.5, 17):  # below min_interval's schedule, above the longest interval's
        row = drift_profile.threshold_for(series, target, 2, 16)
        assert row["threshold"] is None and row["reachable"][0] < 2.1 and row["reachable"][1] > 15.9
    assert drift_profile.round_sig(0.0123456) == 0.0123 and drift_profile.round_sig(0.0123456, up=True) == 0.0124


# ----------------------------------------------------------------------------- the script
@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    from eval.tiny import train
    from eval.tiny.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    out = tmp_path_factory.mktemp("micro") / "model"
    train.model_class("llada")(train.model_config(tok, "llada", tiny=True)).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_profile_end_to_end(micro_model, tmp_path, monkeypatch):
    out = tmp_path / "drift_profile.json"
    drift_profile.main(["--model", str(micro_model), "--n", "2", "--arith-gen", "24,24,8", "--hotpot-gen", "8,8,8",
                        "--targets", "3,6", "--verify", "--out", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == {"arith", "hotpot"} and report["commands"][0].endswith("--no-progress")
    for family, steps in (("arith", 24), ("hotpot", 8)):
        entry = report["tasks"][family]
        traces = entry["traces"]
        assert traces["step"] == [s for s in range(steps) if s % 8]  # the paper policy's partial steps
        assert traces["since_refresh"] == [s % 8 for s in traces["step"]] and len(traces["drift"]) == 2
        since = np.array(traces["since_refresh"])
        for view, rows in (("per_example", np.array(traces["drift"])), ("batch_mean", np.mean(traces["drift"], 0))):
            table = entry["views"][view]["percentiles"]
            assert sorted(map(int, table)) == list(range(1, 8))
            for k, row in table.items():
                values = rows[..., since == int(k)].ravel()
                assert row["n"] == len(values)
                expected = [np.percentile(values, q) for q in drift_profile.PERCENTILES]
                assert [row[f"p{q}"] for q in drift_profile.PERCENTILES] == pytest.approx(expected, rel=2e-3)
            for row in entry["views"][view]["thresholds"]:
                assert row["target"] in (3, 6)
                if row["threshold"] is not None:
                    measured = row["verified"]
                    assert measured["steps"] == steps * (2 if view == "per_example" else 1)
                    assert 2 <= measured["steps_per_refresh"] <= 16 and 0 <= measured["accuracy"] <= 1
    md = out.with_suffix(".md").read_text()
    assert md.count("| since |") == 2 and "multihop" in md and report["commands"][0] in md
    # new targets from the stored traces, no model; the same targets give the same thresholds, which keep their runs
    again = tmp_path / "again.json"
    derived = drift_profile.main(["--from-json", str(out), "--targets", "3,6,5", "--out", str(again), "--no-progress"])
    for family, entry in derived["tasks"].items():
        for view in drift_profile.VIEWS:
            before = report["tasks"][family]["views"][view]["thresholds"]
            after = entry["views"][view]["thresholds"]
            assert [r["target"] for r in after] == [3, 6, 5]
            assert [(r["threshold"], r.get("verified")) for r in after[:2]] == \
                [(r["threshold"], r.get("verified")) for r in before]
            assert "verified" not in after[2] or after[2]["threshold"] in [r["threshold"] for r in before]
    assert len(derived["commands"]) == 2 and "--from-json" in derived["commands"][1]
    # --verify again on the same thresholds and intervals keeps the runs it has (an interrupted run resumes)
    monkeypatch.setattr(drift_profile, "verify_threshold", lambda *a, **k: pytest.fail("ran a verified threshold again"))
    drift_profile.main(["--from-json", str(out), "--model", str(micro_model), "--verify", "--targets", "3,6",
                        "--out", str(tmp_path / "resumed.json"), "--no-progress"])
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    for family, entry in resumed["tasks"].items():
        for view in drift_profile.VIEWS:
            assert entry["views"][view] == report["tasks"][family]["views"][view]


@pytest.mark.parametrize("args,message", [
    (["--families", "gsm8k"], "unknown"),
    (["--n", "0"], "at least 1"),
    (["--targets", "4,x"], "comma-separated numbers"),
    (["--min-interval", "20"], "exceeds the longest interval"),
    (["--transfer-ratio", "0"], "recomputes nothing"),
])
def test_profile_errors_are_clear(micro_model, args, message, capsys):
    with pytest.raises(SystemExit):
        drift_profile.main(["--model", str(micro_model), *args])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}/missing"], "no config.json"),
    ([], "--model is required"),
    (["--from-json", "{tmp}/report.json", "--verify"], "--model is required"),
    (["--from-json", "{tmp}/missing.json"], "not a drift_profile report"),
])
def test_profile_needs_a_model_or_a_report(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        drift_profile.main([a.format(tmp=tmp_path) for a in args])
    assert message in capsys.readouterr().err


def test_frontier_rows_use_the_committed_calibration():
    """eval.frontier's drift rows are the thresholds the committed profile found (batch-mean view), for
    the intervals it assumed: re-running the profile without updating the rows fails here."""
    from eval.frontier import run as frontier

    report = json.loads((REPO / "eval" / "results" / "drift_profile.json").read_text())
    trigger = report["trigger"]
    for family, thresholds in frontier.DRIFT_THRESHOLDS.items():
        rows = report["tasks"][family]["views"]["batch_mean"]["thresholds"]
        assert tuple(r["threshold"] for r in rows) == thresholds
        for t in thresholds:
            cfg = dict(frontier.settings_for(family, "llada"))[f"drift={t:g}"]
            assert (cfg.response_min_interval, cfg.response_interval) == (trigger["response_min_interval"],
                                                                          trigger["response_interval"])
            assert (cfg.prompt_interval, cfg.transfer_ratio) == (report["policy"]["prompt_interval"],
                                                                 report["policy"]["transfer_ratio"])
