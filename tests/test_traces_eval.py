"""eval/traces/run.py on CPU: traces of a micro proxy model per cache and rule, with accuracy, that
replay to the same answers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.traces import run as traces  # noqa: E402
from tests import test_frontier_eval  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

micro_model = test_frontier_eval.micro_model


def test_rules_and_caches_parse():
    assert traces.parse_rule("fixed") == {} and traces.parse_rule("threshold:0.9") == {"threshold": 0.9}
    assert traces.parse_rule("factor:1") == {"factor": 1.0}
    assert traces.cache_config("block-dual").policy == "block-dual" and traces.cache_config("none") is None
    with pytest.raises(SystemExit):
        traces.parse_rule("thr0.9")
    with pytest.raises(SystemExit):
        traces.cache_config("dual")


def test_traces_record_replay_and_report(micro_model, tmp_path):
    from dllm_cache.sampling.generate import generate
    from dllm_cache.sampling.trace import ReplaySchedule, read_trace
    from eval.tiny import tasks
    from eval.tiny.evaluate import load_model

    n = 3
    paths = traces.main(["--model", str(micro_model), "--name", "micro", "--n", str(n), "--gen", "16,16,8",
                         "--rule", "threshold:0.5", "--cache", "none", "block-dual", "--stop-at-eos",
                         "--device", "cpu", "--out-dir", str(tmp_path), "--no-progress"])
    assert sorted(p.name for p in paths) == sorted(f"traces_micro_arith_threshold0.5_{c}_eos.json.gz"
                                                   for c in ("none", "block-dual"))
    for path in paths:
        data = read_trace(path)
        meta, rows = data["meta"], data["rows"]
        assert meta["gen_length"] == 16 and meta["block_length"] == 8 and meta["stop_at_eos"] is True
        assert 0 <= meta["accuracy"] <= 1 and 0 <= meta["uncached_accuracy"] <= 1 and meta["uncached_forwards"] == 16
        assert [r["example"] for r in rows] == list(range(n))
        ReplaySchedule(rows, 16, 8)  # a valid schedule for the bench
        assert data["summary"]["rows"] == n and data["summary"]["tokens_per_step"] >= 1
    # the uncached threshold trace replays to the very same answers (rows in the batch's order)
    data = read_trace(tmp_path / "traces_micro_arith_threshold0.5_none_eos.json.gz")
    model, tok = load_model(str(micro_model), "cpu", torch.float32)
    examples = tasks.test_examples("arith", n)
    prompts = [tasks.prompt_and_target("arith", ex)[0] for ex in examples]
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    enc = tok([prompts[i] for i in order], padding=True, return_tensors="pt", add_special_tokens=False)
    schedule = ReplaySchedule([data["rows"][i] for i in order], 16, 8)
    out = generate(model, enc["input_ids"], enc["attention_mask"], gen_length=16, steps=16, block_length=8,
                   schedule=schedule)
    texts = [tok.decode(row[enc["input_ids"].shape[1] :].tolist(), skip_special_tokens=True) for row in out]
    assert texts == [data["rows"][i]["text"] for i in order]
