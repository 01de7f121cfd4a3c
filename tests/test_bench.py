"""`dllm-cache bench` end to end on CPU with tiny models: structure, exactness, FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_cache.bench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread

SMALL = ["--prompt-len", "16", "--gen-len", "16", "--steps", "16", "--block-length", "8",
         "--batch-size", "1", "2", "--warmup-steps", "2", "--no-progress", "--repeats", "1"]


def _run(tmp_path, capsys, shape: str, tag: str, *extra: str) -> dict:
    assert main(["--shape", shape, *SMALL, "--out-dir", str(tmp_path), "--tag", tag, *extra]) == 0
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"{tag}.{ext}").stat().st_size > 0
    printed = capsys.readouterr().out
    md = (tmp_path / f"{tag}.md").read_text()
    assert printed.rstrip().endswith(md.rstrip().splitlines()[-1])  # the table is printed last
    assert "| batch | cache |" in printed
    return json.loads((tmp_path / f"{tag}.json").read_text())


def _check_structure(report: dict, shape: str) -> None:
    meta = report["meta"]
    assert meta["model"] == shape and meta["batch_sizes"] == [1, 2]
    assert meta["workload"]["prompt_len"] == 16 and meta["workload"]["steps"] == 16
    assert meta["peak_tflops"] is None  # roofline skipped on CPU
    for check in report["flop_check"]:
        assert check["flop_counter_full_step"] == check["analytic_full_step"]
        assert check["logits_finite"]
    results = report["results"]
    assert [r["batch_size"] for r in results] == [1, 1, 2, 2]
    for r in results:
        assert r["latency_s"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["timed_steps"] == 16 and not r["extrapolated"]
        assert sum(r["step_counts"].values()) == 16
        assert 0.0 <= r["agreement"] <= 1.0
    uncached = [r for r in results if r["cache"] is None]
    assert len(uncached) == 2 and all(r["speedup"] == 1.0 and r["cache_stats"] is None for r in uncached)
    assert meta["weights_gb"] > 0
    for r in results:
        assert r["peak_mem_gb"] is None and r["estimated_peak_gb"] > meta["weights_gb"]  # CPU: estimate only
        if r["cache"] is not None:
            assert r["cache_stats"]["steps"] == 16
            held = r["cache_bytes"]
            assert held["prompt_kv"] > 0 and held["response_deltas"] > 0 and held["prompt_deltas"] == 0
            assert held["total"] == sum(v for k, v in held.items() if k != "total")
        else:
            assert r["cache_bytes"] is None


@pytest.mark.parametrize("shape", ["tiny-llada", "tiny-dream"])
def test_bench_exact_config_matches_uncached(tmp_path, capsys, shape):
    report = _run(tmp_path, capsys, shape, "exact", "--transfer-ratio", "1.0", "--response-interval", "1",
                  "--prompt-interval", "1")
    _check_structure(report, shape)
    for batch in (1, 2):
        base, cached = [r for r in report["results"] if r["batch_size"] == batch]
        assert cached["cache"] == {"prompt_interval": 1, "response_interval": 1, "transfer_ratio": 1.0, "compile": False,
                                   "policy": "frontier"}
        assert cached["agreement"] == 1.0
        # Every step is a full step; the cached model runs the LM head on the rows the sampler
        # scores only (LLaDA: the block of 8; Dream: rows P-1 .. L-2, 16), the uncached one on all 32.
        d = report["meta"]["dims"]
        scored = 8 if shape == "tiny-llada" else 16
        assert base["flops"] - cached["flops"] == 16 * batch * (32 - scored) * 2 * d["d_model"] * d["vocab"]
        assert cached["step_counts"]["full"] == 16


@pytest.mark.parametrize("shape", ["tiny-llada", "tiny-dream"])
def test_bench_default_config_saves_flops(tmp_path, capsys, shape):
    report = _run(tmp_path, capsys, shape, "default")
    _check_structure(report, shape)
    for batch in (1, 2):
        base, cached = [r for r in report["results"] if r["batch_size"] == batch]
        assert cached["cache"] == {"prompt_interval": 100, "response_interval": 8, "transfer_ratio": 0.25, "compile": False,
                                   "policy": "frontier"}  # CacheConfig()'s selection
        assert cached["flops"] < base["flops"] and cached["flop_reduction"] > 1.0
        assert cached["step_counts"] == {"full": 1, "response": 1, "prompt": 0, "partial": 14}
        stats = cached["cache_stats"]
        assert stats["full_steps"] == 1 and stats["partial_steps"] == 14
        assert cached["recomputed_fraction"] == pytest.approx(0.25)


def test_bench_reports_memory(tmp_path, capsys):
    report = _run(tmp_path, capsys, "tiny-llada", "mem")
    md = (tmp_path / "mem.md").read_text()
    assert "peak GiB" in md and "| batch | cache | peak (est.) | prompt kv | response kv |" in md
    cached = [r for r in report["results"] if r["cache"] is not None]
    assert [r["cache_bytes"]["prompt_kv"] for r in cached] == [24 * 1024, 48 * 1024]  # 3 layers x 16 x 2 x 64 x 4 B


def test_bench_fp8_kv_rows(tmp_path, capsys):
    """--kv-cache-dtype fp8: every cached run says so in its label and config, and holds fp8 K/V
    (1 byte a value + a float32 scale per token and head) and the one-layer workspace."""
    report = _run(tmp_path, capsys, "tiny-llada", "fp8", "--kv-cache-dtype", "fp8")
    cached = [r for r in report["results"] if r["cache"] is not None]
    assert all(r["label"].endswith("kv-fp8") and r["cache"]["kv_cache_dtype"] == "fp8" for r in cached)
    assert [r["cache_bytes"]["prompt_kv"] for r in cached] == [b * 3 * 16 * 2 * (64 + 4 * 4) for b in (1, 2)]
    assert all(r["cache_bytes"]["kv_workspace"] > 0 for r in cached)
    assert any("fp8" in note for note in report["meta"]["notes"])


def test_bench_stops_before_any_work_when_a_batch_cannot_fit(monkeypatch, tmp_path):
    import dllm_cache.bench.runner as bench
    from dllm_cache.analysis import memory
    from dllm_cache.bench import memory as bench_memory
    from dllm_cache.models.tiny import tiny_llada_config

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the fit check")

    free = max(bench_memory.run_peak(tiny_llada_config(), 3, 16, 16, 8, 4, cached)["total"] for cached in (0, 1))
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: free)
    monkeypatch.setattr(bench, "build_model", no_build)
    with pytest.raises(SystemExit, match=r"batch size \[4, 8\] cannot fit .*largest batch that fits is 3"):
        main(["--shape", "tiny-llada", "--prompt-len", "16", "--gen-len", "16", "--steps", "16", "--block-length", "8",
              "--batch-size", "1", "4", "8", "--no-progress", "--out-dir", str(tmp_path)])


def test_bench_max_steps_extrapolates(tmp_path, capsys):
    report = _run(tmp_path, capsys, "tiny-llada", "trunc", "--max-steps", "3", "--response-interval", "4")
    meta = report["meta"]
    assert meta["timed_steps"] == 5  # raised to Kr + 1 so the window holds a response refresh
    assert any("timed the first 5 of 16" in note for note in meta["notes"])
    for r in report["results"]:
        assert r["extrapolated"] and r["timed_steps"] == 5 and r["latency_s"] > 0
        if r["cache"] is not None:
            assert r["cache_stats"]["steps"] == 5


def test_bench_dry_run_and_task_note(capsys):
    assert main(["--shape", "llada-8b", "--workload", "gsm8k", "--batch-size", "1", "8", "--dry-run",
                 "--task", "gsm8k_local"]) == 0
    captured = capsys.readouterr()
    assert "not implemented in the bench" in captured.err
    assert "estimated GPU compute" in captured.out
    assert "est. peak GiB" in captured.out


def test_bench_local_model_dir(tmp_path, capsys):
    from dllm_cache.models.tiny import tiny_dream

    tiny_dream().save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--prompt-len", "8", "--gen-len", "8", "--steps", "8",
                 "--batch-size", "1", "--no-progress", "--repeats", "1", "--out-dir", str(tmp_path), "--tag", "local"]) == 0
    report = json.loads((tmp_path / "local.json").read_text())
    assert report["meta"]["family"] == "Dream" and len(report["results"]) == 2
    assert "Mean time per denoising step" in capsys.readouterr().out


def test_bench_block_policies(tmp_path, capsys):
    """Fast-dLLM's prefix and dual cache beside the feature cache in one bench: a refresh per block
    (2 blocks of 8), block steps otherwise, the counts the cache saw, fewer FLOPs, no deltas held."""
    report = _run(tmp_path, capsys, "tiny-llada", "blocks", "--policy", "paper", "block-prefix", "block-dual",
                  "--max-steps", "10")
    for batch in (1, 2):
        rows = {r["label"]: r for r in report["results"] if r["batch_size"] == batch}
        assert list(rows) == ["uncached", "Kp=100 Kr=8 r=0.25", "block-prefix", "block-dual"]
        assert rows["uncached"]["extrapolated"] and rows["Kp=100 Kr=8 r=0.25"]["extrapolated"]
        for name in ("block-prefix", "block-dual"):
            r = rows[name]
            assert not r["extrapolated"] and r["timed_steps"] == 16 and not r["notes"]  # stats = schedule
            assert r["step_counts"]["full"] == 2 and r["step_counts"]["block"] == 14
            assert r["cache_stats"]["block_steps"] == 14 and r["cache_bytes"]["response_deltas"] == 0
            assert r["flops"] < rows["uncached"]["flops"]
        assert rows["block-dual"]["flops"] < rows["block-prefix"]["flops"]
        assert rows["block-dual"]["recomputed_fraction"] == pytest.approx(8 / 16)


def _trace_file(tmp_path, gen=16, block=8):
    from dllm_cache.models.tiny import tiny_llada
    from dllm_cache.sampling.generate import generate
    from dllm_cache.sampling.trace import DecodeTrace, write_trace

    trace = DecodeTrace()
    ids = torch.randint(0, 200, (3, 6), generator=torch.Generator().manual_seed(0))
    generate(tiny_llada(), ids, gen_length=gen, steps=gen, block_length=block, threshold=0.05, trace=trace)
    return write_trace(tmp_path / "trace_tiny.json", trace.rows(),
                       {"gen_length": gen, "block_length": block, "accuracy": 0.5}), trace.rows()


def test_bench_replays_a_trace(tmp_path, capsys):
    """--trace: every run but the one-token-per-step baseline takes the recorded steps per block."""
    from dllm_cache.sampling.trace import steps_per_block

    path, rows = _trace_file(tmp_path)
    report = _run(tmp_path, capsys, "tiny-llada", "traced", "--trace", str(path), "--policy", "paper", "block-dual")
    assert report["meta"]["decoding"]["trace_meta"]["accuracy"] == 0.5
    assert "Decoding: trace trace_tiny" in (tmp_path / "traced.md").read_text()
    assert "proxy accuracy 50.0%" in (tmp_path / "traced.md").read_text()
    for batch in (1, 2):
        steps = sum(steps_per_block(rows[:batch], 2))
        assert steps < 16
        got = {r["label"]: r for r in report["results"] if r["batch_size"] == batch}
        assert list(got) == ["uncached", "uncached + trace trace_tiny", "Kp=100 Kr=8 r=0.25 + trace trace_tiny",
                             "block-dual + trace trace_tiny"]
        assert got["uncached"]["timed_steps"] == 16 and got["uncached"]["decoding"] == "fixed"
        for label, r in got.items():
            if label != "uncached":
                assert r["timed_steps"] == steps and sum(r["step_counts"].values()) == steps and not r["notes"]
                assert r["flops"] < got["uncached"]["flops"] and r["decoding"] == "trace trace_tiny"
        assert got["block-dual + trace trace_tiny"]["step_counts"]["full"] == 2
    with pytest.raises(SystemExit, match="disagrees with the trace"):
        main(["--shape", "tiny-llada", "--prompt-len", "8", "--gen-len", "32", "--trace", str(path), "--dry-run"])


def test_bench_dry_run_with_blocks_and_a_trace(tmp_path, capsys):
    path, _ = _trace_file(tmp_path, gen=256, block=32)
    assert main(["--shape", "llada-8b", "--workload", "gsm8k", "--batch-size", "1", "--policy", "block-dual",
                 "--trace", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "block-dual + trace trace_tiny" in out and "decoding trace trace_tiny" in out
def test_stats_dict_summarises_the_per_step_drift():
    from dllm_cache.bench.runner import _stats_dict

    stats = {"steps": 3, "recompute_fraction": None, "config": object(),
             "drift": {"cond": {"step": [1, 2, 3], "since_refresh": [1, 2, 1], "drift": [0.1, 0.3, 0.2], "dropped": 4}}}
    out = _stats_dict(stats)
    assert out["steps"] == 3 and out["recompute_fraction"] is None and isinstance(out["config"], str)
    assert out["drift"] == {"cond": {"steps": 3, "mean": pytest.approx(0.2), "max": 0.3, "dropped": 4}}
    json.dumps(out)  # a report can hold it


def test_rows_are_written_as_they_finish(tmp_path, monkeypatch):
    """A run killed mid-way (a GPU call's time limit) leaves the rows it measured on disk, marked incomplete."""
    from dllm_cache.bench import runner

    calls = {"n": 0}
    real = runner.estimate_latency

    def stop_after_two(run, kinds):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # what a time limit's SIGINT does in the third run
        return real(run, kinds)

    monkeypatch.setattr(runner, "estimate_latency", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(["--shape", "tiny-llada", *SMALL[:-6], "--batch-size", "1", "--warmup-steps", "1", "--no-progress",
              "--repeats", "1", "--policy", "paper", "frontier", "--out-dir", str(tmp_path), "--tag", "cut"])
    report = json.loads((tmp_path / "cut.json").read_text())
    assert report["meta"]["complete"] is False
    assert [r["cache"] is None for r in report["results"]] == [True, False]  # the uncached baseline, then paper
    assert "**Incomplete**" in (tmp_path / "cut.md").read_text()
    assert not (tmp_path / "cut.png").exists()
