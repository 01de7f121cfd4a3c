"""Continuous batching's gain (issue 26, item 3): the same closed-loop load on `dllm-cache serve` with and
without --continuous, alternated and repeated, so the difference can be told from the machine's noise.

    python -m eval.serving.continuous_gain --repeats 2 --result eval/results/serving_continuous_cpu.json -- \\
        --model eval/tiny/model --prompt-set arith-drill --concurrency 4 8 16 --requests-per-client 4 \\
        --gen-length 64 --block-length 16 --tokens-per-step 4 --caches block-dual --max-batch-size 8

Everything after `--` is eval.serving's own arguments (run.py); each run starts its own server on loopback
(static, then continuous, then static again, ...: alternating spreads a drift of the machine's load over both).
The load must put rows that end in different blocks into one batch, or continuous batching has nothing to
gain: `--prompt-set arith-drill` with the shipped model does (its answers end at its end token after ~5-55
tokens). `--mixed-lengths` does not: each length is its own batch key, so such rows never share a batch.
Continuous batching applies to block policies with the fixed schedule and greedy decoding
(dllm_cache/serving/continuous.py), hence `--caches block-dual`.

Writes the JSON (every run's rows, and per cache and concurrency the continuous/static ratios of tokens/s and
latency, one per repeat) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from eval.serving import run as bench

KEYS = ("tokens_per_s", "p50_latency_s", "p99_latency_s", "tokens_per_server_cpu_s")


def summarise(runs: list[dict]) -> list[dict]:
    """Per (cache, concurrency): each mode's values per repeat and the continuous/static ratio per repeat
    (a repeat pairs the static and the continuous run made one after the other)."""
    out = []
    pairs = sorted({(r["cache"], r["concurrency"]) for run in runs for r in run["rows"]}, key=lambda k: (k[0], k[1]))
    for cache, conc in pairs:
        entry = {"cache": cache, "concurrency": conc}
        by_mode: dict[bool, dict[int, dict]] = {False: {}, True: {}}
        for run in runs:
            for r in run["rows"]:
                if (r["cache"], r["concurrency"]) == (cache, conc):
                    by_mode[run["continuous"]][run["repeat"]] = r
        repeats = sorted(set(by_mode[False]) & set(by_mode[True]))
        for key in KEYS + ("errors",):
            entry[f"static_{key}"] = [by_mode[False][k].get(key) for k in repeats]
            entry[f"continuous_{key}"] = [by_mode[True][k].get(key) for k in repeats]
        for key in KEYS:
            entry[f"ratio_{key}"] = [c / s if c is not None and s else None
                                     for c, s in zip(entry[f"continuous_{key}"], entry[f"static_{key}"])]
        best = [max((v for v in entry[f"{m}_tokens_per_s"] if v is not None), default=None) for m in ("static", "continuous")]
        entry["ratio_best_tokens_per_s"] = best[1] / best[0] if None not in best and best[0] else None
        out.append(entry)
    return out


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

    def vals(v: list, digits: int) -> str:
        return " / ".join("-" if x is None else f"{x:.{digits}f}" for x in v)

    lines = [f"# Continuous batching vs static batching: {result['model']} on {result['device']}", "",
             f"`{result['command']}`", "",
             f"{result['repeats']} repeats, each a static run then a continuous run (values listed per repeat, "
             "ratio = continuous / static). Closed loop: each client sends its requests one after another. Tokens per "
             "CPU second: the tokens returned over the server process's user + system CPU time (less moved by other "
             "processes on a shared machine than tokens per wall second).", "",
             "| cache | clients | tokens/s static | tokens/s continuous | ratio | p50 latency (s) static | continuous | "
             "ratio | p99 latency (s) static | continuous | ratio | server tokens per CPU s static | continuous | ratio | "
             "errors static / continuous |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    best = ["", "Fastest run of each mode (the least disturbed by other processes), continuous / static tokens/s: " + ", ".join(
        f"{e['cache']} at {e['concurrency']} clients {vals([e['ratio_best_tokens_per_s']], 2)}" for e in result["summary"]) + "."]
    for e in result["summary"]:
        lines.append(f"| {e['cache']} | {e['concurrency']} | {vals(e['static_tokens_per_s'], 1)} | "
                     f"{vals(e['continuous_tokens_per_s'], 1)} | {vals(e['ratio_tokens_per_s'], 2)} | "
                     f"{vals(e['static_p50_latency_s'], 2)} | {vals(e['continuous_p50_latency_s'], 2)} | "
                     f"{vals(e['ratio_p50_latency_s'], 2)} | {vals(e['static_p99_latency_s'], 2)} | "
                     f"{vals(e['continuous_p99_latency_s'], 2)} | {vals(e['ratio_p99_latency_s'], 2)} | "
                     f"{vals(e['static_tokens_per_server_cpu_s'], 1)} | {vals(e['continuous_tokens_per_server_cpu_s'], 1)} | "
                     f"{vals(e['ratio_tokens_per_server_cpu_s'], 2)} | "
                     f"{sum(e['static_errors'])} / {sum(e['continuous_errors'])} |")
    lines += best
    if result.get("note"):
        lines += ["", result["note"]]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def write_wave(result: dict, path: Path) -> None:
    """The JSON and markdown of an --engine-wave run; the fastest wave of each path is the estimate least
    disturbed by other processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    w = result["engine_wave"]
    ms = ", ".join(f"{s:.2f} / {c:.2f} s ({c / s:.2f})" for s, c in zip(w["static_s"], w["continuous_s"]))
    fast_s, fast_c = min(w["static_s"]), min(w["continuous_s"])
    path.with_suffix(".md").write_text(
        f"# One wave of {w['rows']} requests, static vs continuous batch path: {result['model']} on {result['device']}\n\n"
        f"`{result['command']}`\n\nIn process, no HTTP, nothing waiting to join: static (every row stays until the "
        f"last finishes) / continuous (a finished row leaves at its block boundary), seconds per wave and ratio, per "
        f"repeat: {ms}. Fastest of each: {fast_s:.2f} / {fast_c:.2f} s ({fast_c / fast_s:.2f}). {w['tokens']} tokens "
        f"per wave (answer lengths {w['answer_lengths']}); tokens equal on both paths: {w['same_tokens']}.\n"
        + (f"\n{result['note']}\n" if result.get("note") else ""))


def engine_wave(bench_args: argparse.Namespace, rows: int, repeats: int) -> dict:
    """The batchers' own work without HTTP, clients or queueing: one wave of `rows` drill requests (one
    batch key) decoded by the static path (Engine.run: every row stays until the last finishes) and by the
    continuous path with nothing waiting to join (continuous.run: a finished row leaves at its block
    boundary), alternated `repeats` times in this process. Isolates the leave-early half of the gain (joins
    need a queue); also checks that both paths return the same tokens per row."""
    from dllm_cache.serving import continuous, load_engine
    from dllm_cache.serving.engine import Decoding, Job

    engine = load_engine(bench_args.model, device=bench_args.device, dtype=bench_args.dtype)
    texts = bench.drill_prompts(rows)
    d = Decoding(bench_args.gen_length, bench.steps_of(bench_args), bench_args.block_length, None, 0.0, None,
                 bench_args.caches[0], None)
    if not continuous.eligible(engine, d):
        raise SystemExit(f"cache {d.cache!r} with this model cannot be batched continuously (continuous.eligible)")

    def fail(err: BaseException) -> None:
        raise err

    def wave(static: bool) -> tuple[float, int, list[list[int]]]:
        got: list[list[int]] = [[] for _ in texts]
        jobs = [Job(engine.encode(t), d, d.gen_length, 1, lambda _c, new, _r, i=i: got[i].extend(new), fail)
                for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        report = engine.run(jobs) if static else continuous.run(engine, jobs, lambda free: [], len(jobs))
        return time.perf_counter() - t0, report.generated_tokens, got

    wave(True), wave(False)  # warm-up
    out = {"rows": rows, "static_s": [], "continuous_s": [], "tokens": None, "same_tokens": True}
    for _ in range(repeats):
        (ts, ns, a), (tc, nc, b) = wave(True), wave(False)
        out["static_s"].append(ts)
        out["continuous_s"].append(tc)
        out["same_tokens"] &= a == b and ns == nc
        out["tokens"] = ns
        out["answer_lengths"] = [len(x) for x in a]
    out["ratio_time"] = [c / s for c, s in zip(out["continuous_s"], out["static_s"])]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="static/continuous pairs (at least 2, to see the noise)")
    p.add_argument("--result", type=Path, default=bench.RESULTS / "serving_continuous_cpu.json")
    p.add_argument("--model-label", default=None, help="what the table calls the model; None = eval.serving's label")
    p.add_argument("--note", default=None, help="a paragraph the table ends with")
    p.add_argument("--engine-wave", type=int, default=0, metavar="ROWS",
                   help="instead of serving: time one wave of ROWS drill requests through the static and the "
                        "continuous batch paths in this process (engine_wave), --repeats times")
    args = p.parse_args(ours)
    if args.engine_wave:
        bench_args = bench.build_parser().parse_args(rest)
        t0 = time.perf_counter()
        wave = engine_wave(bench_args, args.engine_wave, args.repeats)
        result = {"device": bench.device_name(bench_args.device), "model": args.model_label or bench_args.model,
                  "command": "python -m eval.serving.continuous_gain " + shlex.join(argv), "wall_s": time.perf_counter() - t0,
                  "settings": {"max_tokens": bench_args.gen_length, "block_length": bench_args.block_length,
                               "steps": bench.steps_of(bench_args), "cache": bench_args.caches[0], "dtype": bench_args.dtype,
                               "prompt_set": "arith-drill"},
                  "engine_wave": wave}
        if args.note:
            result["note"] = args.note
        write_wave(result, args.result)
        print(args.result.with_suffix(".md").read_text())
        return 0
    if any(a == "--continuous" or a.startswith("--out") for a in rest):
        raise SystemExit("pass eval.serving's arguments without --continuous and --out: this script sets both")
    runs, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="continuous-gain-") as tmp:
        for k in range(args.repeats):
            for continuous in (False, True):
                out = Path(tmp) / f"{k}-{int(continuous)}.json"
                bench.main(rest + ["--out", str(out), "--no-plot"] + (["--continuous"] if continuous else []))
                got = json.loads(out.read_text())
                runs.append({"repeat": k, "continuous": continuous, "rows": got["rows"]})
                print(json.dumps({"repeat": k, "continuous": continuous,
                                  "tokens_per_s": [round(r["tokens_per_s"], 1) for r in got["rows"]]}), flush=True)
    result = {"device": got["device"], "model": args.model_label or got["model"],
              "command": "python -m eval.serving.continuous_gain " + shlex.join(argv),
              "repeats": args.repeats, "wall_s": time.perf_counter() - t0,
              "settings": got["settings"] | {"continuous": "both (see runs)"},
              "summary": summarise(runs), "runs": runs}
    if args.note:
        result["note"] = args.note
    write(result, args.result)
    print(f"wrote {args.result} (+ .md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
