"""eval/peers/run.py on CPU without the peers' code (never committed): identical weights by parameter
name, the Fast-dLLM transfer stand-in, the plan built from decoding traces, and our worker end to
end through its own process, with stacked.json / .md / .png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.peers import run as peers  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests


class _Two(torch.nn.Module):
    def __init__(self, order):
        super().__init__()
        for name in order:  # the same names, registered in another order
            setattr(self, name, torch.nn.Linear(4, 4))


def test_init_by_name_ignores_parameter_order():
    a, b = _Two(["x", "y"]), _Two(["y", "x"])
    peers.init_by_name(a, seed=3, std=0.1)
    peers.init_by_name(b, seed=3, std=0.1)
    assert torch.equal(a.x.weight, b.x.weight) and torch.equal(a.y.weight, b.y.weight)
    assert not torch.equal(a.x.weight, a.y.weight) and (a.x.bias == 0).all()
    peers.init_by_name(b, seed=4, std=0.1)
    assert not torch.equal(a.x.weight, b.x.weight)


def test_replay_transfer_keeps_the_recorded_count_of_most_confident_tokens():
    calls = []

    def original(logits, temperature, remasking, mask_index, x, num, threshold=None):
        calls.append(threshold)
        return logits.argmax(-1), torch.zeros_like(mask_index)

    logits = torch.zeros(1, 5, 7)
    for i, p in enumerate([3.0, 9.0, 1.0, 7.0, 5.0]):
        logits[0, i, i] = p
    mask = torch.tensor([[True, True, True, True, False]])
    transfer = peers.replay_transfer(original, [2, 1])
    assert transfer(logits, 0.0, "low_confidence", mask, None, None, 0.9)[1].tolist() == [[False, True, False, True, False]]
    assert transfer(logits, 0.0, "low_confidence", mask, None, None, 0.9)[1].tolist() == [[False, True, False, False, False]]
    transfer.reset()
    assert transfer(logits, 0.0, "low_confidence", mask, None, None, 0.9)[1].sum() == 2
    assert calls == [0.9] * 3  # the peer's own function ran every time
    transfer.reset()
    nothing = torch.zeros_like(mask)  # a forward on a finished block: decodes nothing, takes no count
    assert transfer(logits, 0.0, "low_confidence", nothing, None, None, 0.9)[1].sum() == 0 and transfer.used() == 0
    assert transfer(logits, 0.0, "low_confidence", mask, None, None, 0.9)[1].sum() == 2 and transfer.used() == 1
    assert peers.replay_transfer(original, None)(logits, 0.0, "x", mask, None, None)[1].sum() == 0


def _traces(tmp_path, gen=16, block=8, names=("threshold0.9_none", "threshold0.9_paper", "threshold0.9_block-dual")):
    from dllm_cache.sampling.trace import write_trace

    rows = [{"blocks": [[3, 3, 2], [4, 4]], "stopped": False}]
    for i, name in enumerate(names):
        write_trace(tmp_path / f"traces_t_{name}.json", rows,
                    {"gen_length": gen, "block_length": block, "accuracy": 0.5 + 0.01 * i, "uncached_accuracy": 0.52})
    return str(tmp_path / "traces_t")


def _args(**kw):
    base = dict(traces=None, workload="gsm8k", dllm_cache_repo=None, fast_dllm_repo=None, compile=False,
                prompt_len=None, gen_len=None, block_length=None)
    return type("A", (), {**base, **kw})()


def test_plan_takes_lengths_and_accuracies_from_the_traces(tmp_path):
    prefix = _traces(tmp_path)
    settings, w, notes = peers.plan(_args(traces=prefix, dllm_cache_repo="x", fast_dllm_repo="y"))
    assert (w["gen_len"], w["block_length"], w["steps"], w["prompt_len"]) == (16, 8, 16, 700)
    ours = {s["setting"]: s for s in settings["ours"]}
    assert list(ours) == ["uncached, 1 token/step", "cache (Kp 100, Kr 8, r 0.25)", "threshold 0.9",
                          "cache + threshold 0.9", "block-dual cache + threshold 0.9"]
    assert ours["uncached, 1 token/step"]["proxy_accuracy"] == 0.52
    assert ours["block-dual cache + threshold 0.9"]["cache"]["policy"] == "block-dual"
    assert ours["cache (Kp 100, Kr 8, r 0.25)"]["proxy_accuracy"] is None  # no fixed_paper trace
    fast = settings["fast-dllm"][0]
    assert fast["trace_row"]["blocks"] == [[3, 3, 2], [4, 4]] and fast["same_as"] == "block-dual cache + threshold 0.9"
    assert settings["dllm-cache-original"][0]["peer_cache"]["response_interval"] == 8
    assert any("fixed_paper: missing" in n for n in notes)
    _traces(tmp_path, gen=32, names=("threshold0.9_none",))
    with pytest.raises(SystemExit, match="different gen_length"):
        peers.plan(_args(traces=prefix))


def test_plan_pairs_each_fast_dllm_cache_with_our_trace_of_the_same_cache(tmp_path):
    names = ("threshold0.9_none", "threshold0.9_default", "threshold0.9_block-prefix", "threshold0.9_block-dual",
             "threshold0.9_kr2")
    prefix = _traces(tmp_path, names=names)
    data = json.loads((tmp_path / "traces_t_threshold0.9_block-prefix.json").read_text())
    data["rows"][0]["blocks"] = [[8], [8]]  # tell the two caches' traces apart
    (tmp_path / "traces_t_threshold0.9_block-prefix.json").write_text(json.dumps(data))
    settings, _, _ = peers.plan(_args(traces=prefix, fast_dllm_repo="y", compile=True))
    ours = {s["setting"]: s for s in settings["ours"]}
    assert ours["frontier cache + threshold 0.9"]["cache"] == {"prompt_interval": 100, "response_interval": 8,
                                                              "transfer_ratio": 0.25, "selection": "frontier",
                                                              "compile": True}
    assert ours["block-prefix cache + threshold 0.9"]["cache"] == {"policy": "block-prefix", "compile": True}
    assert ours["frontier cache, Kr 2 + threshold 0.9"]["cache"]["response_interval"] == 2
    assert ours["frontier cache, Kr 2 + threshold 0.9"]["trace_rows"][0]["blocks"] == [[3, 3, 2], [4, 4]]
    dual, pre = settings["fast-dllm"]
    assert (dual["function"], dual["trace_row"]["blocks"], dual["same_as"]) == \
        ("generate_with_dual_cache", [[3, 3, 2], [4, 4]], "block-dual cache + threshold 0.9")
    assert (pre["function"], pre["trace_row"]["blocks"], pre["same_as"]) == \
        ("generate_with_prefix_cache", [[8], [8]], "block-prefix cache + threshold 0.9")
    assert pre["proxy_accuracy"] == pytest.approx(0.52)  # the block-prefix trace's (third written)
    # without a block-prefix trace the prefix cache replays the dual one and claims no accuracy or twin
    (tmp_path / "traces_t_threshold0.9_block-prefix.json").unlink()
    _, pre = peers.plan(_args(traces=prefix, fast_dllm_repo="y"))[0]["fast-dllm"]
    assert pre["trace_row"]["blocks"] == [[3, 3, 2], [4, 4]] and pre["proxy_accuracy"] is None and "same_as" not in pre


def test_verdicts_compare_our_best_with_fast_dllm_at_its_best():
    base = {"workload": "gsm8k", "batch": 1, "gen_length": 256, "device": "H100"}
    rows = [{**base, "impl": "ours", "setting": "best: block-prefix", "tokens_per_s": 300.0},
            {**base, "impl": "fast-dllm", "setting": "dual", "tokens_per_s": 200.0},
            {**base, "impl": "fast-dllm", "setting": "prefix", "tokens_per_s": 250.0},
            {**base, "gen_length": 512, "impl": "ours", "setting": "best: x", "tokens_per_s": 100.0},
            {**base, "gen_length": 512, "impl": "fast-dllm", "setting": "dual", "tokens_per_s": 125.0},
            {**base, "workload": "hotpotqa", "impl": "ours", "setting": "best: y", "tokens_per_s": 1.0}]
    found = peers.verdicts(rows)
    assert len(found) == 2  # hotpotqa has no Fast-dLLM row
    assert "1.20x Fast-dLLM at its best (prefix" in found[0] and found[0].endswith("faster.")
    assert "0.80x" in found[1] and "NOT faster" in found[1]


def test_run_ours_end_to_end_and_report(tmp_path, capsys):
    prefix = _traces(tmp_path)
    out = tmp_path / "stacked.json"
    stale = {"impl": "ours", "setting": "best: old", "workload": "gsm8k", "batch": 1, "gen_length": 16, "device": "cpu"}
    other = {**stale, "setting": "kept", "workload": "hotpotqa"}
    out.write_text(json.dumps([stale, other]))
    assert peers.main(["run", "--shape", "tiny-llada", "--traces", prefix, "--prompt-len", "8", "--device", "cpu",
                       "--no-compile", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["setting"] == "kept" and not any(r["setting"] == "best: old" for r in rows)
    mine = [r for r in rows if r["workload"] == "gsm8k"]
    assert all(r["impl"] == "ours" and not r["error"] for r in mine), mine
    for key in ("impl", "setting", "workload", "batch", "gen_length", "seconds", "tokens_per_s", "speedup",
                "proxy_accuracy", "device"):
        assert all(key in r for r in mine)
    by = {r["setting"]: r for r in mine}
    assert by["uncached, 1 token/step"]["speedup"] == 1.0 and by["uncached, 1 token/step"]["steps"] == 16
    for name in ("threshold 0.9", "cache + threshold 0.9", "block-dual cache + threshold 0.9"):
        assert by[name]["steps"] == 5 and by[name]["tokens_per_s"] == pytest.approx(16 / by[name]["seconds"])
    best = [r for r in mine if r["setting"].startswith("best: ")]
    # the fastest of ours whose proxy accuracy is within a point of uncached (52%: the 50% trace is out)
    eligible = [r for r in mine if not r["baseline"] and (r["proxy_accuracy"] is None or r["proxy_accuracy"] >= 0.51)]
    assert by["threshold 0.9"]["proxy_accuracy"] == 0.5 and by["threshold 0.9"] not in eligible
    assert len(best) == 1 and best[0]["tokens_per_s"] == max(r["tokens_per_s"] for r in eligible)
    table = (tmp_path / "stacked.md").read_text()
    assert table.count("| gsm8k | 1 | 16 | ours |") == 5  # each measurement once: the best row is marked, not repeated
    assert table.count("**best:** ") == 1 and f"| **best:** {best[0]['setting'][len('best: '):]} |" in table
    assert (tmp_path / "stacked.png").stat().st_size > 0
