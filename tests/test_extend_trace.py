"""eval.traces.extend: a gen-L trace extended to gen L2 replays at L2, padding blocks as recorded."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dllm_cache.models.tiny import tiny_llada  # noqa: E402
from dllm_cache.sampling.generate import generate  # noqa: E402
from dllm_cache.sampling.trace import DecodeTrace, ReplaySchedule, read_trace, write_trace  # noqa: E402
from eval.traces import extend as extend_trace  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

ROWS = [{"blocks": [[6, 2], [8], [7, 1]], "stopped": False, "correct": True},
        {"blocks": [[8], [5, 3]], "stopped": True, "correct": False}]  # stopped early: left alone


def _write(tmp_path, name="traces_m_arith_threshold0.9_block-dual.json"):
    meta = {"name": "m", "task": "arith", "gen_length": 24, "steps": 24, "block_length": 8, "accuracy": 0.5}
    return write_trace(tmp_path / name, ROWS, meta)


def test_extends_each_row_by_repeating_its_last_block(tmp_path):
    out, = extend_trace.main([str(_write(tmp_path)), "--gen", "40", "--name", "m-gen40"])
    assert out.name == "traces_m-gen40_arith_threshold0.9_block-dual.json"
    data = read_trace(out)
    assert data["rows"][0]["blocks"] == [[6, 2], [8], [7, 1], [7, 1], [7, 1]] and data["rows"][0]["correct"]
    assert data["rows"][1] == ROWS[1]
    meta = data["meta"]
    assert (meta["gen_length"], meta["steps"], meta["name"], meta["accuracy_at_gen"], meta["accuracy"]) == \
        (40, 40, "m-gen40", 24, 0.5)
    assert meta["extended_from"].endswith("traces_m_arith_threshold0.9_block-dual.json")
    assert data["summary"]["mean_steps"] == (9 + 3) / 2
    ReplaySchedule(data["rows"], 40, 8)  # a valid schedule at the new length (raises otherwise)


def test_extended_trace_replays_step_for_step():
    model = tiny_llada(d_model=32, n_layers=2).eval()
    ids = torch.randint(0, 100, (1, 6))
    rows = extend_trace.extend_rows([{"blocks": [[3, 5], [8]], "stopped": False}], 2)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    trace = DecodeTrace()
    with torch.no_grad():
        generate(model, ids, gen_length=32, steps=32, block_length=8, schedule=ReplaySchedule(rows, 32, 8), trace=trace)
    handle.remove()
    assert len(calls) == 5 and trace.rows()[0]["blocks"] == [[3, 5], [8], [8], [8]]


@pytest.mark.parametrize("gen,message", [(24, "longer"), (30, "whole number of blocks"), (16, "longer")])
def test_refuses_lengths_that_are_not_whole_blocks_longer(tmp_path, gen, message, capsys):
    with pytest.raises(SystemExit):
        extend_trace.main([str(_write(tmp_path)), "--gen", str(gen), "--name", "x"])
    assert "can only extend" in capsys.readouterr().err


def test_refuses_files_not_named_as_eval_traces_names_them(tmp_path, capsys):
    path = _write(tmp_path, "mine.json")
    with pytest.raises(SystemExit):
        extend_trace.main([str(path), "--gen", "40", "--name", "x"])
    assert "expected a name starting with 'traces_m_'" in capsys.readouterr().err
    bad = tmp_path / "traces_m_arith_x.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit):
        extend_trace.main([str(bad), "--gen", "40", "--name", "x"])
