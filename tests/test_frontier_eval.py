"""The frontier pipeline on CPU: a micro proxy model, every row's fields, the summary file the
issue names (frontier.json), the markdown table and the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dllm_cache.analysis.paired import mcnemar_exact  # noqa: E402
from eval.frontier import run as frontier  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests


def test_wilson_interval():
    lo, hi = frontier.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert frontier.wilson_interval(0, 10)[0] == pytest.approx(0.0) and frontier.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    lo, hi = frontier.wilson_interval(10, 10)
    assert 0.69 < lo < 0.73  # not a degenerate [1, 1]


def test_gen_option_takes_exactly_three_integers():
    from eval.tiny.evaluate import parse_gen

    assert parse_gen("16,16,8", "arith-gen") == {"gen_length": 16, "steps": 16, "block_length": 8}
    for bad in ("256,256", "256,256,8,1", "256,x,8"):  # never padded or truncated silently
        with pytest.raises(SystemExit, match="--arith-gen takes gen_length,steps,block_length"):
            parse_gen(bad, "arith-gen")


def test_settings_cover_the_issue_sweeps():
    names = [n for n, _ in frontier.settings_for("arith", "llada")]
    for expected in ("uncached", "paper-default", "official", "default", "Kr=1", "Kr=2", "Kr=4", "Kr=16",
                     "ratio=0", "ratio=0.1", "ratio=0.5", "ratio=1", "Kp=10", "Kp=50", "Kp=100", "frontier"):
        assert expected in names
    configs = dict(frontier.settings_for("arith", "llada"))
    assert (configs["official"].prompt_interval, configs["official"].response_interval) == (50, 7)
    assert configs["paper-default"].selection == "paper" and configs["frontier"].selection == "frontier"
    assert all(c is None or not c.cuda_graphs for c in configs.values())  # eager on both sides
    dream = [n for n, _ in frontier.settings_for("hotpot", "dream")]
    assert any("shifted-row" in n for n in dream) and not any("shifted-row" in n for n in names)
    calibrated = frontier.DRIFT_THRESHOLDS["arith"]
    assert all(f"drift={t:g}" in names for t in calibrated) and "per-layer" not in names  # needs the layer count
    with_layers = dict(frontier.settings_for("arith", "llada", n_layers=4))
    assert with_layers["per-layer"].layer_ratios[1:] == pytest.approx((0.125, 0.25, 0.375))
    assert with_layers["frontier per-layer"].selection == "frontier"
    mid = configs[f"drift={calibrated[1]:g}"]
    assert mid.response_drift_threshold == calibrated[1] and mid.response_interval == 16
    assert configs[f"frontier-only drift={calibrated[1]:g}"].response_drift_threshold == calibrated[1]
    hotpot = dict(frontier.settings_for("hotpot", "llada"))  # each task its own thresholds
    assert [hotpot[f"drift={t:g}"].response_drift_threshold for t in frontier.DRIFT_THRESHOLDS["hotpot"]] == \
        list(frontier.DRIFT_THRESHOLDS["hotpot"])


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    from eval.tiny import train

    out = tmp_path_factory.mktemp("micro")
    train.main(["--out", str(out / "run"), "--tiny-config", "--device", "cpu", "--batch-size", "1", "--seq-len", "512",
                "--workers", "0", "--no-final-eval", "--steps", "2", "--export-dir", str(out / "model")])
    return out / "model"


def test_default_row_is_the_measured_row_that_cacheconfig_does_now():
    rows = [{"name": n, "config": frontier._config_fields(c), "accuracy": i / 100}
            for i, (n, c) in enumerate(frontier.settings_for("arith", "llada")) if n != "default"]
    stale = {"name": "default", "config": {**rows[1]["config"], "selection": "stale"}, "accuracy": 0.0}
    rows.insert(3, stale)
    out = frontier.with_current_default(rows)
    want = frontier.default_config_fields()
    (default,) = [r for r in out if r["name"] == "default"]
    assert out.index(default) == 3 and default["config"] == want and default["accuracy"] > 0
    source = next(r for r in rows if r["name"] == default["measured_as"])
    assert source["config"] == want and source["accuracy"] == default["accuracy"]
    # rows measured before a field existed count as its default; no measured match: no default row
    old = [{**r, "config": r["config"] and {k: v for k, v in r["config"].items() if k != "layer_ratios"}} for r in rows]
    assert [r["name"] for r in frontier.with_current_default(old)] == [r["name"] for r in out]
    others = [r for r in rows if r["config"] is None or r["config"] != want]
    assert "default" not in [r["name"] for r in frontier.with_current_default(others)]
    # a threshold-decoded row of the default config is another decoding: never the default row
    thr = [{**r, "threshold": 0.9} if r["config"] == want else r for r in rows]
    assert "default" not in [r["name"] for r in frontier.with_current_default(thr)]
    # a run that measured the default config only under the name "default" keeps that row
    named = [r for r in rows if r["config"] != want] + [{**next(r for r in rows if r["config"] == want), "name": "default"}]
    (kept,) = [r for r in frontier.with_current_default(named) if r["name"] == "default"]
    assert kept["config"] == want and "measured_as" not in kept


def test_run_and_report(micro_model, tmp_path):
    common = ["paper-default", "Kr=2", "frontier", "per-layer"]
    drift = {task: f"drift={frontier.DRIFT_THRESHOLDS[family][1]:g}" for family, task in frontier.TASK_NAMES.items()}
    only = ",".join([*common, *drift.values()])  # a name of the other task's list is not run
    frontier.main(["run", "--model", str(micro_model), "--name", "llada", "--n", "3", "--device", "cpu",
                   "--only", only, "--arith-gen", "16,16,8", "--hotpot-gen", "8,8,8", "--arith-batch", "3",
                   "--hotpot-batch", "2", "--out-dir", str(tmp_path), "--no-progress"])
    rows = json.loads((tmp_path / "frontier_llada.json").read_text())["rows"]
    assert {(r["task"], r["name"]) for r in rows} == {(t, n) for t in ("arith", "multihop")
                                                     for n in ("uncached", *common, drift[t])}
    for r in rows:  # per-problem correctness on every row; cached rows paired with uncached (exact McNemar)
        base = next(u for u in rows if u["task"] == r["task"] and u["name"] == "uncached")
        assert r["correct"] == len(r["correct_ids"]) and all(0 <= i < r["n"] for i in r["correct_ids"])
        assert r["mean_prompt_tokens"] > 0
        if r["name"] == "uncached":
            assert r["paired"] is None
            continue
        b, c = r["paired"]["cached_right_uncached_wrong"], r["paired"]["cached_wrong_uncached_right"]
        assert (b, c) == (len(set(r["correct_ids"]) - set(base["correct_ids"])),
                          len(set(base["correct_ids"]) - set(r["correct_ids"])))
        assert r["paired"]["exact"] and r["paired"]["p_value"] == mcnemar_exact(b, c)
    for r in rows:
        assert r["n"] == 3 and 0 <= r["accuracy"] <= 1 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert r["gpu_seconds"] > 0 and r["flops"] > 0
        if r["name"] == "uncached":
            assert r["flops_vs_uncached"] == 1 and r["agreement_with_uncached"] == 1.0 and r["speedup"] == 1
        else:
            assert r["flops_vs_uncached"] < 1 and r["cache_stats"]["steps"] > 0
    frontier.main(["report", "--out-dir", str(tmp_path)])
    summary = json.loads((tmp_path / "frontier.json").read_text())
    entry = summary["llada"]["arith"]
    # the summary names the row that CacheConfig() does now "default" (here "frontier", run under that name)
    assert entry["n"] == 3 and {s["name"] for s in entry["settings"]} == {"uncached", "default", *common, drift["arith"]}
    (default,) = [s for s in entry["settings"] if s["name"] == "default"]
    assert default["config"] == frontier.default_config_fields() and default["measured_as"] in common
    for s in entry["settings"]:
        assert {"name", "accuracy", "ci95", "paired", "flops", "gpu_seconds", "device"} <= set(s)
    assert entry["mean_prompt_tokens"] > 0
    assert "multihop" in summary["llada"]
    assert (tmp_path / "frontier.md").read_text().count("| paper-default |") == 2
    assert (tmp_path / "frontier.png").stat().st_size > 0


def test_threshold_rows_pair_with_their_own_uncached_row(micro_model, tmp_path):
    """`run --threshold` adds the threshold-decoding rows: each carries its threshold, its FLOPs count the
    steps it ran, and its paired object is against the uncached row of the same decoding."""
    thr_rows = ["default thr=0.9", "default tokens-clock thr=0.9"]
    frontier.main(["run", "--model", str(micro_model), "--name", "llada", "--n", "3", "--device", "cpu",
                   "--families", "arith", "--only", ",".join(["Kr=2", *thr_rows]), "--threshold", "--arith-gen", "16,16,8",
                   "--arith-batch", "3", "--out-dir", str(tmp_path), "--no-progress"])
    rows = {r["name"]: r for r in json.loads((tmp_path / "frontier_llada.json").read_text())["rows"]}
    assert list(rows) == ["uncached", "Kr=2", "uncached thr=0.9", *thr_rows]
    base, step_base = rows["uncached thr=0.9"], rows["uncached"]
    assert base["threshold"] == 0.9 and base["generation"]["threshold"] == 0.9 and step_base["threshold"] is None
    assert 1 <= base["steps_run"] <= 16 and base["flops"] == pytest.approx(step_base["flops"] * base["steps_run"] / 16)
    assert base["flops_vs_uncached"] == 1 and base["paired"] is None
    for name in thr_rows:
        r = rows[name]
        assert r["threshold"] == 0.9 and r["paired"]["against"] == "uncached thr=0.9"
        b, c = r["paired"]["cached_right_uncached_wrong"], r["paired"]["cached_wrong_uncached_right"]
        assert (b, c) == (len(set(r["correct_ids"]) - set(base["correct_ids"])),
                          len(set(base["correct_ids"]) - set(r["correct_ids"])))
        assert r["flops_vs_uncached"] == pytest.approx(r["flops"] / base["flops"]) and r["cache_stats"]["steps"] > 0
    assert rows["default tokens-clock thr=0.9"]["config"]["response_clock"] == "tokens"
    assert rows["Kr=2"]["paired"]["against"] == "uncached"
    frontier.main(["report", "--out-dir", str(tmp_path)])
    settings = {s["name"]: s for s in json.loads((tmp_path / "frontier.json").read_text())["llada"]["arith"]["settings"]}
    assert settings["default thr=0.9"]["threshold"] == 0.9 and settings["Kr=2"]["threshold"] is None
    assert "default" not in settings  # the default config ran under a threshold only: not the default row


def test_block_policy_flops_follow_the_steps_run(micro_model):
    """Under a threshold a block policy runs fewer steps than scheduled: realized_flops spreads the steps the
    cache counted over the blocks (at the full schedule it equals the analytic cost), and `recost` rewrites a
    file's rows costed the old way (every scheduled step)."""
    from collections import Counter
    from dataclasses import replace

    from dllm_cache import CacheConfig
    from eval.tiny.evaluate import load_model, mean_flops

    model, _ = load_model(str(micro_model), "cpu", torch.float32)
    lengths, gen = Counter({40: 2, 60: 1}), {"gen_length": 32, "steps": 32, "block_length": 8}
    for policy in ("block-dual", "block-prefix"):
        cfg = replace(CacheConfig(), policy=policy, cuda_graphs=False)
        full = frontier.realized_flops(model, lengths, gen, cfg, {"steps": 32, "generations": 1})
        assert full == pytest.approx(mean_flops(model, lengths, gen, cfg))
        fewer = frontier.realized_flops(model, lengths, gen, cfg, {"steps": 10, "generations": 2})  # 5 per generation
        first = frontier.realized_flops(model, lengths, gen, cfg, {"steps": 4, "generations": 1})  # one step a block
        assert first < fewer < full


def test_recost_rewrites_rows_costed_at_every_scheduled_step(micro_model, tmp_path):
    frontier.main(["run", "--model", str(micro_model), "--name", "llada", "--n", "2", "--device", "cpu", "--families",
                   "arith", "--only", "block-dual thr=0.9,default thr=0.9", "--threshold", "--arith-gen", "16,16,8",
                   "--arith-batch", "2", "--out-dir", str(tmp_path), "--no-progress"])
    path = tmp_path / "frontier_llada.json"
    report = json.loads(path.read_text())
    good = {r["name"]: r["flops"] for r in report["rows"]}
    (row,) = [r for r in report["rows"] if r["name"] == "block-dual thr=0.9"]
    row["flops"] *= 3  # as the old cost model had it
    path.write_text(json.dumps(report))
    assert frontier.main(["recost", "--model", str(micro_model), str(path)]) == 0
    fixed = {r["name"]: r for r in json.loads(path.read_text())["rows"]}
    assert {n: r["flops"] for n, r in fixed.items()} == pytest.approx(good)
    base = fixed["uncached thr=0.9"]["flops"]
    assert fixed["block-dual thr=0.9"]["flops_vs_uncached"] == pytest.approx(good["block-dual thr=0.9"] / base)


def test_merged_rows_keep_the_machine_they_ran_on(tmp_path):
    row = {"task": "arith", "n": 1, "generation": {}, "batch_size": 1, "accuracy": 1.0, "agreement_with_uncached": 1.0}
    path = tmp_path / "frontier_llada.json"
    frontier.write_json(path, {"model": "llada", "gpu": "H100", "rows": [{**row, "name": "uncached", "config": None},
                                                                          {**row, "name": "Kr=2", "config": {}}]})
    new = {"model": "llada", "gpu": "H200", "rows": [{**row, "name": "uncached thr=0.9", "config": None, "gpu": "H200"}]}
    merged = frontier.merge_into(path, new)
    assert {r["name"]: r["gpu"] for r in merged["rows"]} == {"uncached": "H100", "Kr=2": "H100", "uncached thr=0.9": "H200"}
    entry = frontier.summarise([merged])["llada"]["arith"]
    assert entry["device"] == "H100 + H200" and [s["device"] for s in entry["settings"]] == ["H100", "H100", "H200"]


def test_tasks_run_as_separate_commands_merge_per_model(micro_model, tmp_path):
    """`run --families arith` then `--families hotpot` leave one file with both tasks; running a
    task again replaces its rows; another model's file is refused."""
    common = ["--model", str(micro_model), "--n", "2", "--device", "cpu", "--only", "Kr=2", "--arith-gen", "8,8,8",
              "--hotpot-gen", "8,8,8", "--out-dir", str(tmp_path), "--no-progress"]
    path = tmp_path / "frontier_llada.json"
    for families in ("arith", "hotpot", "arith"):
        frontier.main(["run", "--name", "llada", "--families", families, *common])
        report = json.loads(path.read_text())
    assert sorted((r["task"], r["name"]) for r in report["rows"]) == [
        ("arith", "Kr=2"), ("arith", "uncached"), ("multihop", "Kr=2"), ("multihop", "uncached")]
    assert [c.split("--families ")[1].split()[0] for c in frontier.commands_of(report)] == ["hotpot", "arith"]
    # a task's settings split over two commands (e.g. one per GPU) merge too; the later uncached row wins
    split = [c if c != "Kr=2" else "Kr=4" for c in common]
    frontier.main(["run", "--name", "llada", "--families", "arith", *split])
    report = json.loads(path.read_text())
    assert sorted((r["task"], r["name"]) for r in report["rows"]) == [
        ("arith", "Kr=2"), ("arith", "Kr=4"), ("arith", "uncached"), ("multihop", "Kr=2"), ("multihop", "uncached")]
    assert "Kr=4" in next(r["command"] for r in report["rows"] if r["name"] == "uncached" and r["task"] == "arith")
    path.rename(tmp_path / "frontier_dream.json")
    with pytest.raises(SystemExit, match="holds model 'llada'"):
        frontier.main(["run", "--name", "dream", "--families", "arith", *common])


def test_parts_split_the_settings_and_merge(micro_model, tmp_path):
    """--part I/K runs interleaved shares of the settings (each with uncached), one per GPU; `merge`
    joins them into the model's file; a malformed part is refused."""
    common = ["--model", str(micro_model), "--name", "llada", "--n", "2", "--device", "cpu", "--families", "arith",
              "--only", "Kr=2,Kr=4,Kr=8", "--arith-gen", "8,8,8", "--no-progress"]
    names = {}
    for i in (1, 2):
        frontier.main(["run", *common, "--part", f"{i}/2", "--out-dir", str(tmp_path / f"p{i}")])
        names[i] = [r["name"] for r in json.loads((tmp_path / f"p{i}" / "frontier_llada.json").read_text())["rows"]]
    assert names == {1: ["uncached", "Kr=2", "Kr=8"], 2: ["uncached", "Kr=4"]}
    into = tmp_path / "all" / "frontier_llada.json"
    frontier.main(["merge", "--into", str(into), *(str(tmp_path / f"p{i}" / "frontier_llada.json") for i in (1, 2))])
    merged = json.loads(into.read_text())
    assert [r["name"] for r in merged["rows"]] == ["uncached", "Kr=2", "Kr=4", "Kr=8"]  # the settings' order
    with pytest.raises(SystemExit, match="I/K"):
        frontier.main(["run", *common, "--part", "2", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="1 <= I <= K"):
        frontier.main(["run", *common, "--part", "3/2", "--out-dir", str(tmp_path)])


def test_summary_orders_models_and_tasks_whatever_the_file_order():
    """frontier.json/.md list LLaDA before Dream, each shipped proxy before its grown one, and
    arith before multihop, though `report` finds the files alphabetically (dream-large first)."""
    def report(model, arch):
        rows = [{"task": task, "name": "uncached", "n": 1, "generation": {}, "batch_size": 1, "config": None,
                 "accuracy": 1.0} for task in ("multihop", "arith")]
        return {"model": model, "arch": arch, "rows": rows, "gpu": "cpu"}

    found = [report("dream-large", "dream"), report("dream", "dream"), report("llada-large", "llada"),
             report("llada", "llada")]
    summary = frontier.summarise(found)
    assert list(summary) == ["llada", "llada-large", "dream", "dream-large"]
    assert all(list(per_task) == ["arith", "multihop"] for per_task in summary.values())


def test_committed_gzipped_model_files_reproduce_the_summary(tmp_path):
    """The per-model files are committed gzipped (issue 24, item 5): `report` reads them and writes
    the committed frontier.json and frontier.md again, byte for byte."""
    results = REPO / "eval" / "results"
    inputs = sorted(results.glob("frontier_*.json.gz"))
    models = {"llada", "dream", "llada-large", "dream-large", "llada-kv", "dream-kv", "llada-large-h200"}
    assert {p.name.removeprefix("frontier_").removesuffix(".json.gz") for p in inputs} == models
    assert frontier.main(["report", "--out-dir", str(tmp_path), "--inputs", *map(str, inputs)]) == 0
    for name in ("frontier.json", "frontier.md"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name


def test_rows_without_per_problem_data_get_paired_bounds():
    """Rows of runs that kept no per-problem correctness: the summary gives the range of the exact p
    that their agreement with uncached and correct counts allow, never an invented exact value."""
    rows = [{"name": "uncached", "config": None, "n": 500, "accuracy": 0.736, "agreement_with_uncached": 1.0},
            {"name": "default", "config": {"selection": "frontier"}, "n": 500, "accuracy": 0.716,
             "agreement_with_uncached": 0.842},
            {"name": "uncached thr=0.9", "config": None, "threshold": 0.9, "n": 500, "accuracy": 0.7},
            {"name": "default thr=0.9", "config": {}, "threshold": 0.9, "n": 500, "accuracy": 0.7,
             "agreement_with_uncached": 0.99}]
    out = frontier.with_paired(rows)
    assert out[0].get("paired") is None and out[2].get("paired") is None
    bounds = out[1]["paired"]
    assert bounds["exact"] is False and bounds["difference"] == -10 and bounds["answers_differ"] == 79
    assert bounds["p_value_min"] == mcnemar_exact(0, 10) and bounds["at_0.05"] == "undetermined"
    assert out[3]["paired"]["against"] == "uncached thr=0.9" and out[3]["paired"]["at_0.05"] == "not significant"
    exact = {"exact": True, "p_value": 1.0}
    assert frontier.with_paired([rows[0], {**rows[1], "paired": exact}])[1]["paired"] is exact  # kept as measured


def test_run_and_merge_add_to_a_gzipped_model_file(tmp_path):
    part = {"model": "m", "arch": "llada", "rows": [{"task": "arith", "name": "uncached", "accuracy": 0.5}]}
    (tmp_path / "part.json").write_text(json.dumps(part))
    into = tmp_path / "frontier_m.json.gz"
    assert frontier.model_file(tmp_path, "m") == tmp_path / "frontier_m.json"  # none yet: plain
    assert frontier.main(["merge", "--into", str(into), str(tmp_path / "part.json")]) == 0
    assert into.read_bytes()[:2] == b"\x1f\x8b" and frontier.read_json(into) == part
    assert frontier.model_file(tmp_path, "m") == into  # a later run adds to the gzipped file
