"""Speed beside accuracy (dllm_cache/integrations/lm_eval/speed.py, compare.py), `dllm-cache eval --compare` end to end,
and multiple-choice (loglikelihood) tasks with the cache on and off, on tiny random models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from dllm_cache.analysis.flops import STEP_KINDS, generation_cost  # noqa: E402
from dllm_cache.integrations.lm_eval import launch as lm_eval_launch  # noqa: E402
from dllm_cache.integrations.lm_eval.compare import accuracy, add_speed_rows  # noqa: E402
from dllm_cache.integrations.lm_eval.model import DLLMCacheLM  # noqa: E402
from tests import test_lm_eval  # noqa: E402  (skips this module too when tokenizers is missing)

# tiny random checkpoints with a byte-level tokenizer (module-scoped fixtures of test_lm_eval)
llada_dir = test_lm_eval.llada_dir


def _req(text: str, task: str) -> SimpleNamespace:
    return SimpleNamespace(args=(text, {"until": []}), task_name=task)


def test_speed_record_matches_the_schedule_and_flops(llada_dir):
    """Forwards by kind = the cache schedule per batch; FLOPs = dllm_cache.analysis.flops at the real shapes;
    batches never mix tasks."""
    lm = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", batch_size=2, gen_length=8, steps=8, block_length=4,
                     cache="on", prompt_interval=4, response_interval=2, transfer_ratio=0.5)
    # task a: three prompts -> batches of 2 and 1; task b: one prompt (same length as a's)
    reqs = [_req("aaaa", "a"), _req("bbbb", "b"), _req("aaaa", "a"), _req("aaaa", "a")]
    lm.generate_until(reqs, disable_tqdm=True)
    speed = lm.get_model_info()["dllm_cache_speed"]
    assert set(speed) == {"a", "b"}
    nominal = generation_cost(lm.speed.dims, 1, 4, 8, 8, lm.cache_config)  # one row, prompt 4, gen 8, 8 steps
    head_rows = 4 + 8 if lm.speed._head_all_rows else None
    for task, batches in (("a", [2, 1]), ("b", [1])):
        rec = speed[task]
        assert rec["requests"] == sum(batches) and rec["gen_tokens"] == 8 * sum(batches)
        assert rec["forwards"] == 8 * len(batches)
        assert rec["steps"] == {**dict.fromkeys(STEP_KINDS, 0), **{k: n * len(batches) for k, n in nominal.step_counts.items()}}
        expected = sum(
            generation_cost(lm.speed.dims, rows, 4, 8, 8, lm.cache_config, logits_tokens=head_rows).flops for rows in batches
        )
        assert rec["flops"] == expected and rec["flops_per_request"] == expected / sum(batches)
        assert rec["recompute_fraction"] == pytest.approx(0.5)
        assert rec["wall_s"] > 0 and rec["gen_tokens_per_s"] == pytest.approx(rec["gen_tokens"] / rec["wall_s"])
    # uncached: every forward is a full one, charged as such
    lm.set_cache(False)
    lm.reset_speed()
    lm.generate_until(reqs[:1], disable_tqdm=True)
    rec = lm.get_model_info()["dllm_cache_speed"]["a"]
    full = generation_cost(lm.speed.dims, 1, 4, 8, 8, None)
    assert rec["steps"] == {**dict.fromkeys(STEP_KINDS, 0), "full": 8} and rec["flops"] == full.flops
    assert rec["recompute_fraction"] is None


def test_set_cache_toggles_exactly(llada_dir):
    """With nothing stale (Kp = Kr = 1) cached and uncached greedy outputs agree; toggling works."""
    lm = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", batch_size=2, gen_length=8, steps=8, cache="on",
                     prompt_interval=1, response_interval=1)
    reqs = [_req("Question: 2+2?\nAnswer:", "t"), _req("abc", "t")]
    cached = lm.generate_until(reqs, disable_tqdm=True)
    lm.set_cache(False)
    assert not lm.cache_on
    assert lm.generate_until(reqs, disable_tqdm=True) == cached
    lm.set_cache(True)
    assert lm.cache_on and lm.generate_until(reqs, disable_tqdm=True) == cached
    off = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", cache="off")
    with pytest.raises(ValueError, match="cache=on"):
        off.set_cache(True)


def test_speed_rows_in_results():
    results = {
        "results": {"t": {"alias": "t", "exact_match,none": 0.5, "exact_match_stderr,none": 0.1}},
        "config": {"dllm_cache_speed": {"t": {"wall_s": 2.0, "gen_tokens_per_s": 16.0, "forwards": 8,
                                              "steps": {"full": 2, "prompt": 0, "response": 2, "partial": 4},
                                              "recompute_fraction": 0.25, "flops_per_request": 3e9}}},
    }
    add_speed_rows(results)
    row = results["results"]["t"]
    assert row["wall_s,speed"] == 2.0 and row["gen_tok_per_s,speed"] == 16.0 and row["steps_partial,speed"] == 4
    assert row["recompute_frac,speed"] == 0.25 and row["gflops_per_req,speed"] == 3.0
    assert accuracy(row) == {"exact_match,none": 0.5}


def test_compare_end_to_end(llada_dir, tmp_path, capsys, only_local_tasks):
    out_dir = tmp_path / "out"
    code = lm_eval_launch.main([
        "--compare", "--model", "dllm_cache", "--tasks", "arith_synth", "--limit", "2", "--output_path", str(out_dir),
        "--model_args", f"pretrained={llada_dir},device=cpu,batch_size=2,gen_length=8,steps=8,block_length=8,"
                        "prompt_interval=4,response_interval=2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dllm-cache --compare" in printed and "| arith_synth | exact_match,none |" in printed
    assert "speedup (wall), FLOP cut" in printed
    assert "speed |" in printed and "gflops_per_req" in printed  # speed rows in lm-eval's own table
    (path,) = out_dir.rglob("results_*.json")
    results = json.loads(path.read_text())
    entry = results["dllm_cache_compare"]["tasks"]["arith_synth"]
    assert set(entry["scores"]) == {"exact_match,none"}
    unc, cac = entry["speed"]["uncached"], entry["speed"]["cached"]
    assert unc["requests"] == cac["requests"] == 2  # the same examples
    assert unc["steps"]["full"] == unc["forwards"] == 8 and unc["steps"]["partial"] == 0
    assert cac["forwards"] == 8 and cac["steps"]["partial"] > 0 and cac["flops"] < unc["flops"]
    assert entry["flop_cut"] == pytest.approx(unc["flops"] / cac["flops"])
    assert entry["speedup"] == pytest.approx(unc["wall_s"] / cac["wall_s"])
    assert results["config"]["model"] == "dllm_cache" and results["config"]["dllm_cache"]["cache"] is True
    assert results["results"]["arith_synth"]["forwards,speed"] == 8
    assert "exact_match,none" in results["dllm_cache_compare"]["uncached_results"]["arith_synth"]
    # paired per example: the same 2 examples, exact McNemar; samples kept out of the file (not asked for)
    paired = entry["paired"]["exact_match,none"]
    assert paired["n"] == 2 and paired["exact"] and 0 <= paired["p_value"] <= 1
    right = {label: round(entry["scores"]["exact_match,none"][label] * 2) for label in ("uncached", "cached")}
    assert paired["cached_right_uncached_wrong"] - paired["cached_wrong_uncached_right"] == right["cached"] - right["uncached"]
    assert "exact McNemar p (n = 2)" in printed and "samples" not in results


def test_paired_scores_pair_right_or_wrong_scores_by_example():
    """Only scores that are 0/1 on every example are paired, on the examples both runs logged."""
    from dllm_cache.analysis.paired import mcnemar_exact
    from dllm_cache.integrations.lm_eval.compare import paired_scores

    def records(rights, extra=None):
        return [{"doc_id": d, "filter": "strict", "metrics": ["exact_match", "f1"], "exact_match": float(r),
                 "f1": 0.5 if d == 0 else float(r)} for d, r in rights.items()] + (extra or [])

    uncached = records({0: 1, 1: 1, 2: 0, 3: 0, 4: 1})
    cached = records({0: 1, 1: 0, 2: 1, 3: 1, 5: 0})  # doc 4 only uncached, doc 5 only cached: not paired
    out = paired_scores(uncached, cached)
    assert set(out) == {"exact_match,strict"}  # f1 takes 0.5 somewhere: graded, not paired
    p = out["exact_match,strict"]
    assert (p["n"], p["cached_right_uncached_wrong"], p["cached_wrong_uncached_right"]) == (4, 2, 1)
    assert p["p_value"] == mcnemar_exact(2, 1)
    assert paired_scores([], cached) == {}
    as_numpy = [{**r, "exact_match": np.float64(r["exact_match"])} for r in cached]  # lm-eval's metrics may be numpy
    assert paired_scores(uncached, as_numpy) == out


def test_compare_refuses_other_models_and_request_caching(only_local_tasks, capsys):
    from dllm_cache.integrations.lm_eval.compare import with_speed

    run = with_speed(lambda **kw: kw, compare=True)
    with pytest.raises(ValueError, match="--compare needs --model dllm_cache"):
        run(model="hf", model_args="pretrained=x")
    with pytest.raises(ValueError, match="drop --use_cache"):
        run(model="dllm_cache", model_args="pretrained=x", use_cache="/tmp/db")


# ----------------------------------------------------------------------------- multiple choice
MC_DOCS = [
    {"question": "2 + 2 =", "choices": ["4", "5", "22"], "label": 0},
    {"question": "The sky is", "choices": ["blue", "green"], "label": 0},
]


def _mc_task_dir(tmp_path: Path) -> Path:
    """A multiple-choice task (loglikelihood of each choice), like ARC / MMLU in lm-eval."""
    folder = tmp_path / "mc_tasks"
    folder.mkdir()
    (folder / "mcdata.py").write_text(
        "import datasets\n"
        f"DOCS = {MC_DOCS!r}\n"
        "def load(**_):\n    return {'test': datasets.Dataset.from_list(DOCS)}\n"
    )
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: ''\ncustom_dataset: !function mcdata.load\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
    )
    return folder


def test_multiple_choice_with_cache_on_and_off(llada_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = _mc_task_dir(tmp_path)
    mc_num, mc_batch = 6, 4
    outs = {}
    for cache in ("off", "on"):
        outs[cache] = lm_eval.simple_evaluate(
            model="dllm_cache",
            model_args=f"pretrained={llada_dir},device=cpu,mc_num={mc_num},mc_batch_size={mc_batch},cache={cache}",
            tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            log_samples=True, bootstrap_iters=0,
        )
    for cache, out in outs.items():
        res = out["results"]["tiny_mc"]
        assert 0.0 <= res["acc,none"] <= 1.0 and "acc_norm,none" in res
        assert out["config"]["dllm_cache"]["cache"] is (cache == "on")
        speed = out["config"]["dllm_cache_speed"]["tiny_mc"]
        n_choices = sum(len(d["choices"]) for d in MC_DOCS)
        # cost: ceil(mc_num / mc_batch_size) forwards of mc_batch_size rows (the mc_num draws) + 1 greedy check, per choice
        assert speed["requests"] == n_choices
        assert speed["forwards"] == n_choices * (math.ceil(mc_num / mc_batch) + 1)
        assert speed["steps"]["partial"] == 0 and speed["recompute_fraction"] is None  # the cache is not used
    # scoring bypasses the cache, so both runs give the same log-likelihoods
    lls = {c: [s["resps"] for s in out["samples"]["tiny_mc"]] for c, out in outs.items()}
    assert lls["on"] == lls["off"]
    assert outs["on"]["results"]["tiny_mc"]["acc,none"] == outs["off"]["results"]["tiny_mc"]["acc,none"]


def test_block_policy_and_parallel_decoding_in_lm_eval(llada_dir):
    """model_args policy=block-dual with factor decoding: the speed record counts the block steps
    (one refresh per block of 4) and charges them FLOPs; the settings are in the results' config."""
    lm = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", batch_size=2, gen_length=8, steps=8, block_length=4,
                     cache="on", policy="block-dual", factor="2.0", stop_at_eos="false")
    lm.generate_until([_req("aaaa", "a"), _req("aaab", "a")], disable_tqdm=True)
    info = lm.get_model_info()
    rec = info["dllm_cache_speed"]["a"]
    assert info["dllm_cache"]["cache_config"]["policy"] == "block-dual"
    assert info["dllm_cache"]["sampler"]["factor"] == 2.0
    assert rec["steps"]["full"] == 2 and rec["forwards"] == rec["steps"]["full"] + rec["steps"]["block"]
    assert rec["forwards"] <= 8 and rec["flops"] > 0
