"""A tiny CPU run of eval/serving/run.py against a live loopback server: the schema of serving.json
(the GPU numbers come from a GPU session, not from here), the table and the plot beside it, and the
direct generate() baseline."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from dllm_cache.serving import Defaults, build_app, load_engine  # noqa: E402
from eval.serving.run import direct_latency, main  # noqa: E402
from tests.test_serving_utils import live, tiny_model_dir, torch_threads  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

ROW_KEYS = {"concurrency", "cache", "requests", "completed", "errors", "tokens_per_s", "p50_latency_s", "p99_latency_s"}


def test_serving_bench_smoke(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "tiny")
    engine = load_engine(str(model_dir), defaults=Defaults(gen_length=8, block_length=4, steps=4))
    out = tmp_path / "serving.json"
    with torch_threads(1), live(build_app(engine, max_batch_size=4)) as server:
        assert main(["--url", server.url, "--concurrency", "1", "3", "--requests-per-client", "2", "--caches", "none",
                     "default", "--gen-length", "8", "--block-length", "4", "--tokens-per-step", "2",
                     "--prompt-chars", "40", "--agreement", "3", "--chunk-times", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"device", "model", "rows", "command"} <= set(result)
    assert [(r["cache"], r["concurrency"]) for r in result["rows"]] == [("none", 1), ("none", 3), ("default", 1),
                                                                        ("default", 3)]
    for row in result["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["requests"] == 2 * row["concurrency"] and row["completed"] == row["requests"] and row["errors"] == 0
        assert row["tokens_per_s"] > 0 and 0 < row["p50_latency_s"] <= row["p99_latency_s"]
        assert row["completion_tokens"] <= 8 * row["requests"]
        # --chunk-times: every request's chunks as they arrived, one per block (2, or 1 if it ended in the first)
        assert len(row["streams"]) == row["requests"]
        for stream in row["streams"]:
            times = [c[0] for c in stream["chunks"]]
            assert 1 <= len(times) <= 2 and times == sorted(times) and stream["first_block_s"] == times[0]
            assert [c[2] for c in stream["chunks"]][-1] in ("length", "stop") and times[-1] <= stream["latency_s"]
        assert 0 < row["p50_first_block_share"] <= 1
    # fp32 on CPU: batched answers are the answers served alone
    assert result["batch_agreement"] == [{"cache": c, "prompts": 3, "identical_fraction": 1.0} for c in ("none", "default")]
    assert "| default | 3 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    settings = {"max_tokens": 8, "block_length": 4, "steps": 4}
    assert direct_latency(str(model_dir), "cpu", "float32", "default", "hello", settings, repeats=1) > 0


def test_merge_keeps_an_earlier_runs_unmeasured_rows(tmp_path):
    """--merge: a run cut by its time limit is completed by a second run; the second run's rows win."""
    from argparse import Namespace

    from eval.serving.run import build_parser, merged_rows, result_of

    earlier = {"command": "first", "rows": [{"cache": "none", "concurrency": 1, "tokens_per_s": 1.0},
                                            {"cache": "default", "concurrency": 1, "tokens_per_s": 2.0}],
               "direct": [], "batch_agreement": [{"cache": "none", "prompts": 4, "identical_fraction": 1.0}]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    args: Namespace = build_parser().parse_args(["--url", "http://x", "--merge", str(path)])
    new = [{"cache": "default", "concurrency": 1, "tokens_per_s": 3.0},
           {"cache": "default", "concurrency": 4, "tokens_per_s": 4.0}]
    result = result_of(args, ["--merge", str(path)], "m", None, merged_rows(args.merge), new, [], [], complete=True)
    assert [(r["cache"], r["concurrency"], r["tokens_per_s"]) for r in result["rows"]] == [
        ("none", 1, 1.0), ("default", 1, 3.0), ("default", 4, 4.0)]
    assert result["rows"][0]["run"] == "earlier" and "run" not in result["rows"][1]
    assert result["batch_agreement"][0]["run"] == "earlier"
    assert result["command"].startswith("first ; then python -m eval.serving")


def _raw_run(tmp_path):
    """A recorded run cut after 3 of the 4 (cache, concurrency) rows it was asked for, with the agreement of
    one cache and no direct timings (the shape of eval/results/serving_raw/h200_run1.json)."""
    rows = [{"cache": c, "concurrency": n, "requests": 2 * n, "completed": 2 * n, "errors": 0, "tokens_per_s": 10.0 * n + k,
             "p50_latency_s": 1.0 + k, "p99_latency_s": 2.0 + k, "p50_first_block_s": 0.5, "wall_s": 3.0}
            for k, (c, n) in enumerate([("none", 1), ("none", 4), ("default", 1)])]
    raw = {"device": "NVIDIA Example GPU", "model": "llada-8b (bfloat16, random weights)", "command": "python -m eval.serving "
           "(cut by its limit)", "complete": False, "rows": rows, "direct": [],
           "batch_agreement": [{"cache": "none", "prompts": 2, "identical_fraction": 1.0}]}
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(raw))
    return raw, path


def test_from_raw_rewrites_a_recorded_run_and_names_what_is_missing(tmp_path):
    """--from-raw measures nothing (no server, no GPU: --device cuda is only the recorded run's argument): the
    numbers, device and command are the recorded ones, the run stays incomplete and the table names every row,
    timing and agreement the arguments asked for and the recording lacks."""
    raw, path = _raw_run(tmp_path)
    out = tmp_path / "serving.json"
    args = ["--shape", "llada-8b", "--device", "cuda", "--dtype", "bfloat16", "--concurrency", "1", "4", "--caches", "none",
            "default", "--direct", "--agreement", "2", "--out", str(out), "--no-plot"]
    assert main(args + ["--from-raw", str(path), "--note", "Device time ran out."]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == raw["rows"] and result["batch_agreement"] == raw["batch_agreement"]
    assert (result["device"], result["model"], result["command"]) == (raw["device"], raw["model"], raw["command"])
    assert result["complete"] is False and result["settings"]["steps"] == 88 and "--from-raw" in result["written_by"]
    md = out.with_suffix(".md").read_text()
    assert ("Not measured: cache default at concurrency 4; the direct generate() latency (--direct) for cache none, "
            "default; the batched-vs-alone agreement (--agreement 2) for cache default. Device time ran out.") in md
    assert "| default | 1 | 2 | 2 | 0 | 12.0 |" in md and not out.with_suffix(".png").exists()
    with pytest.raises(SystemExit, match="not among"):  # arguments that did not ask for the recorded rows
        main(["--shape", "llada-8b", "--concurrency", "1", "--caches", "none", "--out", str(out), "--from-raw", str(path)])


def test_replot_redraws_the_serving_plot(tmp_path):
    from eval import replot

    raw, path = _raw_run(tmp_path)
    assert replot.plotter("serving", raw) is not None and replot.plotter("serving", {"rows": []}) is None
    assert replot.main(["--results", str(tmp_path), "--out-dir", str(tmp_path / "png"), "raw"]) == [tmp_path / "png" / "raw.png"]
    assert (tmp_path / "png" / "raw.png").read_bytes()[:4] == b"\x89PNG"


def test_continuous_gain_summary_pairs_repeats():
    from eval.serving.continuous_gain import summarise

    def row(n, tps):
        return {"cache": "block-dual", "concurrency": n, "tokens_per_s": tps, "p50_latency_s": 1.0, "p99_latency_s": 2.0,
                "errors": 0}

    runs = [{"repeat": k, "continuous": c, "rows": [row(8, tps)]}
            for k, c, tps in [(0, False, 100.0), (0, True, 150.0), (1, False, 50.0), (1, True, 40.0)]]
    (entry,) = summarise(runs)
    assert entry["static_tokens_per_s"] == [100.0, 50.0] and entry["continuous_tokens_per_s"] == [150.0, 40.0]
    assert entry["ratio_tokens_per_s"] == [1.5, 0.8] and entry["ratio_best_tokens_per_s"] == 1.5
    assert entry["ratio_tokens_per_server_cpu_s"] == [None, None]  # rows without the server's CPU time


def test_engine_wave_static_and_continuous_paths_agree(tmp_path):
    """One wave through both batch paths in process: timings per repeat, and the same tokens per row."""
    from eval.serving.continuous_gain import engine_wave
    from eval.serving.run import build_parser

    model_dir = tiny_model_dir(tmp_path / "tiny")
    args = build_parser().parse_args(["--model", str(model_dir), "--gen-length", "8", "--block-length", "4",
                                      "--tokens-per-step", "2", "--caches", "block-dual"])
    with torch_threads(1):
        wave = engine_wave(args, rows=3, repeats=2)
    assert wave["same_tokens"] is True and len(wave["static_s"]) == len(wave["continuous_s"]) == 2
    assert 0 < wave["tokens"] <= 3 * 8 and all(t > 0 for t in wave["static_s"] + wave["continuous_s"])
    args.caches = ["default"]  # the feature cache is not batched continuously: refused, not measured
    with pytest.raises(SystemExit, match="continuously"):
        engine_wave(args, rows=1, repeats=1)


def test_percentile_interpolates_between_requests():
    """The p50 of two requests is their mean (nearest rank rounded half to even gave the faster one)."""
    from eval.serving.run import percentile

    assert percentile([1.0, 3.0], 0.5) == 2.0
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.99) == pytest.approx(4.96)
    assert percentile([], 0.5) is None
