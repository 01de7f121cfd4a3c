"""eval/memory/run.py on CPU with a tiny model: rows with the memory.json fields, merged by key."""

import json

import pytest

from eval.memory.run import main, parse_run

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

FIELDS = {"model", "workload", "batch", "prompt_len", "weights_gb", "uncached_peak_gb", "cached_peak_gb", "device"}


def test_rows_have_the_fields_and_merge_by_key(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["--shape", "tiny-llada", "--runs", "16/16:1,2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["workload"], r["batch"]) for r in rows] == [("prompt16-gen16", 1), ("prompt16-gen16", 2)]
    for r in rows:
        assert FIELDS <= set(r) and r["prompt_len"] == 16 and r["weights_gb"] > 0
        assert r["uncached_peak_gb"] is None and r["cached_peak_gb"] is None  # no allocator peak on CPU
        assert r["estimated_cached_peak_gb"] > r["weights_gb"]
        assert r["cache_bytes"]["prompt_kv"] == r["batch"] * 3 * 16 * 2 * 64 * 4  # layers x P x K,V x d x fp32
    assert main(["--shape", "tiny-llada", "--runs", "16/16:2", "8/8:1", "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert [(r["prompt_len"], r["batch"]) for r in merged] == [(16, 1), (16, 2), (8, 1)]
    assert "| tiny-llada | prompt16-gen16 | 2 | 16 |" in out.with_suffix(".md").read_text()


def test_run_specs():
    name, workload, batches = parse_run("hotpotqa:1,4")
    assert (name, workload.prompt_len, workload.gen_len, batches) == ("hotpotqa", 4000, 32, [1, 4])
    name, workload, batches = parse_run("16000/32:1")
    assert (name, workload.prompt_len, workload.steps, workload.block_length) == ("prompt16000-gen32", 16000, 32, 32)
    with pytest.raises(SystemExit, match="expected WORKLOAD:B1,B2"):
        parse_run("hotpotqa")


def test_too_long_runs_are_refused_before_any_work_unless_lifted(tmp_path):
    """tiny-llada's limit is 512 positions: a 600-token run is refused up front (no row written,
    the message names the run and --max-length); --max-length 700 measures it. Rows are written
    as they come, so a run that fails later keeps the earlier ones."""
    out = tmp_path / "memory.json"
    with pytest.raises(SystemExit, match=r"prompt584-gen16 \(600 tokens\).*--max-length"):
        main(["--shape", "tiny-llada", "--runs", "16/16:1", "584/16:1", "--out", str(out)])
    assert not out.exists()
    assert main(["--shape", "tiny-llada", "--runs", "584/16:1", "--max-length", "700", "--out", str(out)]) == 0
    assert [r["prompt_len"] for r in json.loads(out.read_text())] == [584]


def test_fp8_rows_sit_beside_the_exact_ones(tmp_path):
    """--kv-cache-dtype fp8: the row says so, its cache holds fp8 K/V and a workspace, and merging
    keeps it apart from the exact row of the same run (rows before the key existed count as exact)."""
    out = tmp_path / "memory.json"
    assert main(["--shape", "tiny-llada", "--runs", "16/16:1", "--out", str(out)]) == 0
    old = json.loads(out.read_text())
    del old[0]["kv_cache_dtype"]  # a row written before the key existed
    out.write_text(json.dumps(old))
    assert main(["--shape", "tiny-llada", "--runs", "16/16:1", "--kv-cache-dtype", "fp8", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r.get("kv_cache_dtype") for r in rows] == [None, "fp8"]
    exact, fp8 = rows
    assert fp8["cache_bytes"]["prompt_kv"] == 3 * 16 * 2 * (64 + 4 * 4)  # layers x P x K,V x (d bytes + 4 heads x scale)
    assert fp8["cache_bytes"]["kv_workspace"] > 0 and exact["cache_bytes"]["kv_workspace"] == 0
    assert fp8["estimated_cached_peak_gb"] < exact["estimated_cached_peak_gb"]
    md = out.with_suffix(".md").read_text()
    assert "| 16 | cpu" in md and "| fp8 |" in md and "| exact |" in md
