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
                     "--prompt-chars", "40", "--agreement", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"device", "model", "rows", "command"} <= set(result)
    assert [(r["cache"], r["concurrency"]) for r in result["rows"]] == [("none", 1), ("none", 3), ("default", 1),
                                                                        ("default", 3)]
    for row in result["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["requests"] == 2 * row["concurrency"] and row["completed"] == row["requests"] and row["errors"] == 0
        assert row["tokens_per_s"] > 0 and 0 < row["p50_latency_s"] <= row["p99_latency_s"]
        assert row["completion_tokens"] <= 8 * row["requests"]
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
