"""Real-rate traces (eval/real_rate/traces.py), the bench's learned peaks (dllm_cache/bench/peaks.py)
and the real-rate runner's report (eval/real_rate/run.py), on CPU with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dllm_cache.bench import cli as bench_cli
from dllm_cache.bench import factory as bench_factory
from dllm_cache.bench import runner as bench
from dllm_cache.bench.peaks import DEVICE_PEAKS, Peaks, learn_peaks, measure_bandwidth, measure_gemm_tflops, table_peaks
from dllm_cache.models import tiny
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import ReplaySchedule, read_trace, summary, write_trace
from eval.real_rate import run as real_rate
from eval.real_rate.traces import PROXY_TRACES, RESULTS, RULES, make_trace, measure_tail, trace_path

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

# ----------------------------------------------------------------------------- traces


def _rate(row):
    return sum(map(sum, row["blocks"])) / sum(map(len, row["blocks"]))


@pytest.mark.parametrize("key", ["llada", "dream"])
def test_gen256_rate_is_in_the_published_band(key):
    trace = make_trace(key, 256)
    lo, hi = RULES[key].published_band
    assert lo <= summary(trace["rows"])["tokens_per_step"] <= hi
    assert lo <= _rate(trace["rows"][0]) <= hi  # batch-1 replays take row 0
    ReplaySchedule(trace["rows"], 256, 32)  # a valid replay
    meta = trace["meta"]
    assert meta["model"] == RULES[key].model and "Fast-dLLM" in meta["sources"] and meta["block_length"] == 32


def test_llada_answer_blocks_take_about_eleven_steps():
    rows = make_trace("llada", 256)["rows"]
    full = [len(b) for r in rows for b in r["blocks"] if len(b) > 2]  # answer blocks (end-of-text ones take 1-2)
    assert 10 <= sum(full) / len(full) <= 12


def test_traces_are_deterministic_and_seeded():
    a, b = make_trace("llada", 512, seed=3), make_trace("llada", 512, seed=3)
    assert a == b
    assert make_trace("llada", 512, seed=4)["rows"] != a["rows"]


def test_longer_generations_add_one_step_end_of_text_blocks_to_the_same_answers():
    short, long = make_trace("llada", 256)["rows"], make_trace("llada", 1024)["rows"]
    rates = [summary(make_trace("llada", g)["rows"])["tokens_per_step"] for g in (256, 512, 1024)]
    assert rates == sorted(rates) and rates[0] < rates[-1]  # the tail gets cheaper per token
    for s, row in zip(short, long):
        n = sum(len(b) for b in s["blocks"])
        # same answer tokens per block (the answer fits in 256 tokens), then one step per added block
        assert [sum(b) for b in row["blocks"][:8]] == [32] * 8
        assert all(b == [32] for b in row["blocks"][8:])
        assert abs(sum(len(b) for b in row["blocks"][:8]) - n) <= 8  # per-block draws; same answer length


def test_tail_rule_is_what_the_proxy_traces_show():
    paths = [p for p in sorted(RESULTS.glob(PROXY_TRACES)) if "_eos.json" not in p.name]
    assert paths, "the proxy's threshold-0.9 traces are committed in eval/results"
    tail = measure_tail(paths)
    assert tail["mean_steps"] == RULES["llada"].tail_steps_per_block
    assert tail["blocks"] == 2 * sum(len(read_trace(p)["rows"]) for p in paths)


def test_real_rate_trace_replays_step_for_step(tmp_path):
    """A written trace reads back, and generate() replays row 0 in exactly its number of steps
    (gen 64 to stay fast: two answer blocks, the rule as at every length)."""
    trace = make_trace("llada", 64, n_rows=4)
    path = write_trace(trace_path(tmp_path, "llada", 64), trace["rows"], trace["meta"])
    data = read_trace(path)
    model = tiny.tiny_llada(seed=0).eval()
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    prompt = torch.randint(0, 200, (1, 8))
    schedule = ReplaySchedule(data["rows"][:1], 64, 32)
    out = generate(model, prompt, gen_length=64, steps=64, block_length=32, schedule=schedule)
    assert len(calls) == sum(len(b) for b in data["rows"][0]["blocks"])
    assert not (out[:, 8:] == model.config.mask_token_id).any()


def test_committed_traces_match_the_generator():
    """eval/results/traces_real-*.json are what `python -m eval.real_rate.traces` writes now."""
    for key, gen in (("llada", 256), ("llada", 512), ("llada", 1024), ("dream", 256)):
        committed = read_trace(trace_path(RESULTS, key, gen))
        assert committed["rows"] == make_trace(key, gen)["rows"]


# ----------------------------------------------------------------------------- peaks


def test_peaks_on_cpu_are_not_measured():
    peaks = learn_peaks(torch.device("cpu"))
    assert peaks.tbps is None and peaks.tflops is None and peaks.source.startswith("n/a")
    assert peaks.floor_ms(16e9) is None
    with pytest.raises(ValueError, match="measure"):
        learn_peaks(torch.device("cpu"), mode="guess")


def test_peak_table_by_device_name():
    assert table_peaks("NVIDIA H200")[1] == 4.8
    assert table_peaks("NVIDIA H100 80GB HBM3")[1] == 3.35
    assert table_peaks("NVIDIA H100 PCIe")[1] == 2.0
    assert table_peaks("NVIDIA GH200 480GB")[0] in ("GH200",)
    assert table_peaks("NVIDIA A100-SXM4-80GB")[1] == 2.039
    assert table_peaks("Some Future GPU") is None
    assert len({e[0] for e in DEVICE_PEAKS}) == len(DEVICE_PEAKS)
    assert Peaks(4.8, 989.0, "table").floor_ms(16e9) == pytest.approx(16e9 / 4.8e12 * 1e3)


def test_measurements_run_and_are_positive():
    """The timed copy and matmul (the bench calls them on CUDA only) give finite positive numbers."""
    assert 0 < measure_bandwidth(torch.device("cpu"), nbytes=4 << 20, repeats=2) < 1e3
    assert 0 < measure_gemm_tflops(torch.device("cpu"), size=64, repeats=2, dtype=torch.float32) < 1e3


def test_by_name_init_equals_the_peers_init():
    """bench --init by-name gives the weights eval/peers/run.py gives the peers' model classes."""
    from eval.peers.run import init_by_name

    a, b = tiny.tiny_llada(seed=1), tiny.tiny_llada(seed=2)
    bench_factory.random_init_(a, 0.02, 5, by_name=True)
    init_by_name(b, 5, 0.02)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    bench_factory.random_init_(b, 0.02, 5)  # the seeded stream differs
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ----------------------------------------------------------------------------- the runner's report


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """One `eval.real_rate ours` stage on the tiny shape (gen 32, one block), plus a peers file."""
    out = tmp_path_factory.mktemp("raw")
    trace = make_trace("llada", 32, n_rows=2)
    path = write_trace(out / "trace32.json", trace["rows"], trace["meta"])
    assert real_rate.main(["ours", "--gen", "32", "--shape", "tiny-llada", "--trace", str(path), "--prompt-len", "16",
                           "--repeats", "1", "--compile", "off", "--max-steps", "9", "--out-dir", str(out)]) == 0
    # the peers stage's file format, with stand-in timings (the peers' code is not installed in CI)
    peers = {"gen_length": 32, "batch": 1, "workload": "gsm8k", "prompt_len": 16, "device": "cpu", "trace": str(path),
             "rows": [{"impl": "fast-dllm", "setting": "dual cache + threshold 0.9, real rate", "seconds": 2.0,
                       "steps": 11, "error": None},
                      {"impl": "dllm-cache-original", "setting": "cache (Kp 100, Kr 8, r 0.25), 1 token/step",
                       "seconds": None, "steps": None, "error": "worker exited 1: boom\nRuntimeError: no"}]}
    (out / "peers_gen32_b1.json").write_text(json.dumps(peers))
    return out


def test_report_rows_have_exactly_the_issue_fields(raw):
    rows = real_rate.report(raw, raw / "real_rate.json")
    data = json.loads((raw / "real_rate.json").read_text())
    assert list(data) == ["rows"] and all(tuple(r) == real_rate.FIELDS for r in data["rows"])
    settings = [r["setting"] for r in rows]
    assert settings[:2] == ["uncached, 1 token/step", "uncached, real rate"]
    for name in ("paper (Kp 100, Kr 8, r 0.25)", "default frontier (Kr 8)", "kr2 (frontier, Kr 2)", "block-prefix",
                 "block-dual"):
        assert name in settings
    base = rows[0]
    assert base["speedup"] == 1.0 and base["tokens_per_step"] == 1.0
    trace_rate = _rate(make_trace("llada", 32, n_rows=2)["rows"][0])
    assert all(r["tokens_per_step"] == pytest.approx(trace_rate) for r in rows[1:] if r["impl"] == "ours")
    peer = next(r for r in rows if r["impl"] == "fast-dllm")
    assert peer["speedup"] == pytest.approx(base["seconds"] / 2.0) and peer["tokens_per_step"] == pytest.approx(32 / 11)
    assert all(r["floor_ratio"] is None for r in rows)  # CPU: no measured bandwidth, no floor
    md = (raw / "real_rate.md").read_text()
    assert "| 32 | 1 | fast-dllm |" in md and "RuntimeError: no" in md and "n/a (CPU" in md
    assert (raw / "real_rate.png").stat().st_size > 0


def test_floor_ratio_is_the_cached_step_over_the_floor():
    meta = {"workload": {"gen_len": 256, "name": "gsm8k"}, "weight_floor_ms": 4.0, "device_name": "GPU", "device": "cuda"}
    row = {"batch_size": 1, "cache": {"policy": "block-dual", "compile": True}, "decoding": "trace x",
           "step_counts": {"full": 8, "block": 72}, "step_ms": {"full": 30.0, "block": 6.0, "partial": None},
           "latency_s": 1.0, "tokens_per_s": 256.0, "speedup": 9.0}
    feature = {**row, "cache": {"policy": "frontier", "response_interval": 2, "compile": False},
               "step_ms": {"full": 30.0, "partial": 8.0, "response": 12.0}, "batch_size": 16}
    a, b = real_rate.rows_from_bench({"meta": meta, "results": [row, feature]})
    assert a["floor_ratio"] == pytest.approx(1.5) and a["setting"] == "block-dual, compiled"
    assert a["tokens_per_step"] == pytest.approx(256 / 80)
    assert b["floor_ratio"] is None and b["setting"] == "kr2 (frontier, Kr 2), CUDA graphs"  # batch 16: no floor


def test_bench_settings_keep_every_compile_variant_beside_block_policies():
    """--compile both with block policies and two Kr values: every feature-cache Kr runs both
    compiled and not (a block policy once reset the loop's Kr, so the compiled Kr-2 runs were lost)."""
    args = bench_cli.build_parser().parse_args(
        ["--shape", "tiny-llada", "--policy", "paper", "frontier", "block-dual", "--response-interval", "8", "2",
         "--compile", "both"])
    got = {(s.policy, s.response_interval, s.compile) for s in bench._settings(args)}
    for policy in ("paper", "frontier"):
        for kr in (8, 2):
            assert {(policy, kr, False), (policy, kr, True)} <= got
    assert {("block-dual", 8, False), ("block-dual", 8, True)} <= got and len(got) == 10


def test_add_rows_keeps_a_later_runs_policy_after_the_main_file(raw, tmp_path):
    """Rows of a later run (add-rows) sit after the run's main file, keep their own speedup, bring no second baseline."""
    import shutil

    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(raw / "ours_gen32_b1.json", later / "ours_gen32_b1.json")
    merged = tmp_path / "raw"
    shutil.copytree(raw, merged)
    out = real_rate.add_rows(later / "ours_gen32_b1.json", ["block-prefix"], "prefix", "a test", merged)
    assert out.name == "ours_gen32_b1_prefix.json"
    kept = json.loads(out.read_text())
    assert [r["cache"]["policy"] for r in kept["results"]] == ["block-prefix"] and "a test" in kept["meta"]["notes"][-1]
    names = [p.name for p in sorted(merged.glob("ours_gen*_b*.json"), key=real_rate._order)]
    assert names == ["ours_gen32_b1.json", "ours_gen32_b1_prefix.json"]
    rows = real_rate.report(merged, merged / "real_rate.json")
    ours = [r["setting"] for r in rows if r["impl"] == "ours"]
    assert ours[0] == "uncached, 1 token/step" and ours.count("uncached, 1 token/step") == 1
    assert ours.count("block-prefix") == 2 and ours[-1] == "block-prefix"
    with pytest.raises(SystemExit, match="no rows of policy"):
        real_rate.add_rows(later / "ours_gen32_b1.json", ["nope"], "x", "", merged)


def test_logged_rows_join_their_group_with_their_source_in_the_notes(raw, tmp_path):
    """Rows transcribed from a printed report (logged_gen<G>_b<B>.json) join the report as given, in their
    (gen, batch) group, and their source sentence is printed under the table."""
    import shutil

    merged = tmp_path / "raw"
    shutil.copytree(raw, merged)
    row = {k: None for k in real_rate.FIELDS} | {"impl": "ours", "setting": "paper, compiled", "workload": "gsm8k",
                                                 "batch": 1, "gen_length": 32, "seconds": 0.5, "speedup": 3.0}
    (merged / "logged_gen32_b1.json").write_text(json.dumps({"source": "printed on the device", "rows": [row]}))
    rows = real_rate.report(merged, merged / "real_rate.json")
    assert row in rows and {r["gen_length"] for r in rows} == {32}
    assert "logged_gen32_b1.json: printed on the device" in (merged / "real_rate.md").read_text()


def test_peers_run_fast_dllm_first_and_keep_its_rows_when_the_original_is_cut(tmp_path, monkeypatch):
    """The peers stage writes after each implementation: a time limit hit by the slow original (one token per step)
    leaves Fast-dLLM's rows, which run first, on disk."""
    from eval.peers import run as peers

    order = []

    def fake_spawn(impl, spec, timeout):
        order.append(impl)
        if impl == "dllm-cache-original":
            raise KeyboardInterrupt  # what the stage's time limit does to the process
        return [{"setting": s["setting"], "seconds": 1.5, "steps": 10} for s in spec["settings"]]

    monkeypatch.setattr(peers, "_spawn", fake_spawn)
    trace = make_trace("llada", 32, n_rows=1)
    path = write_trace(tmp_path / "trace32.json", trace["rows"], trace["meta"])
    with pytest.raises(KeyboardInterrupt):
        real_rate.main(["peers", "--gen", "32", "--shape", "tiny-llada", "--trace", str(path), "--prompt-len", "8",
                        "--device", "cpu", "--dllm-cache-repo", "x", "--fast-dllm-repo", "y", "--out-dir", str(tmp_path)])
    assert order == ["fast-dllm", "dllm-cache-original"]
    rows = json.loads((tmp_path / "peers_gen32_b1.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["fast-dllm", "fast-dllm"] and all(r["seconds"] == 1.5 for r in rows)
