"""Speed at the rate real models decode (issue 25): ours (every policy) vs Fast-dLLM's code vs the
original dLLM-Cache code, LLaDA-8B shape, random bf16 weights identical across implementations,
decoding steps replayed from the real-rate traces (eval/real_rate/traces.py: ~3.2 tokens per step
at gen 256, as LLaDA-8B-Instruct decodes GSM8K at threshold 0.9).

Stages (eval/real_rate/gpu.sh runs them on one GPU, each well under 10 minutes):

    PYTHONPATH=. python -m eval.real_rate ours --gen 256 --batch 1      # dllm-cache bench -> real_rate_raw/ours_gen256_b1.*
    PYTHONPATH=. python -m eval.real_rate peers --gen 256 --batch 1 \\
        --dllm-cache-repo peers/dLLM-cache --fast-dllm-repo peers/Fast-dLLM      # -> real_rate_raw/peers_gen256_b1.json
    PYTHONPATH=. python -m eval.real_rate report                        # -> real_rate.json / .md / .png

`ours` runs `dllm-cache bench` (weights `--init by-name`, the scheme eval/peers/run.py gives the peers'
model classes, so all three hold the same weights; the same random prompts, `bench.random_prompts`):
the uncached baseline at one token per step (steps = gen length; timed over its first steps and
extrapolated, as its steps all cost the same), the uncached run at the real rate, and every cache
policy at the real rate. `peers` runs eval/peers/run.py's workers for Fast-dLLM's dual and prefix
caches (its transfer function runs, then the trace's count of most confident tokens is kept) and
the original dLLM-Cache (one token per step: it has no parallel decoding). Every speedup is over
our uncached one-token-per-step run of the same gen length and batch.

real_rate.json holds exactly {"rows": [{impl, setting, workload, batch, gen_length, tokens_per_step,
seconds, tokens_per_s, speedup, device, floor_ratio}]}; floor_ratio (ours, batch 1, cached rows) is
the measured time of the run's cached step (the feature cache's partial step, the block caches'
block step) over the weight-read floor (every parameter byte once at this GPU's measured HBM
bandwidth, dllm_cache.bench.peaks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
RAW = RESULTS / "real_rate_raw"
WORKLOAD = "gsm8k"  # prompt 700, block 32 (Fast-dLLM's GSM8K setting)
PROMPT_LEN = 700
THRESHOLD = 0.9
FIELDS = ("impl", "setting", "workload", "batch", "gen_length", "tokens_per_step", "seconds", "tokens_per_s",
          "speedup", "device", "floor_ratio")
PAPER = {"prompt_interval": 100, "response_interval": 8, "transfer_ratio": 0.25, "selection": "paper"}


def trace_file(gen: int, key: str = "llada") -> Path:
    from eval.real_rate.traces import trace_path

    return trace_path(RESULTS, key, gen)


# ----------------------------------------------------------------------------- ours: the bench


def bench_argv(gen: int, batch: int, compile_mode: str, repeats: int, out_dir: Path, max_steps: int = 33,
               shape: str = "llada-8b", trace: Path | None = None, prompt_len: int | None = None,
               policies: tuple[str, ...] = ("paper", "frontier", "block-prefix", "block-dual"),
               response_intervals: tuple[int, ...] = (8, 2), warmup_steps: int | None = None) -> list[str]:
    """`dllm-cache bench` arguments of one ours stage: every policy (paper and frontier at Kr 8 and
    Kr 2, block-prefix, block-dual) at the real rate, plus the two uncached runs."""
    trace = trace or trace_file(gen)
    return ["--shape", shape, "--workload", WORKLOAD, "--init", "by-name", "--trace", str(trace),
            "--batch-size", str(batch), "--policy", *policies,
            "--response-interval", *map(str, response_intervals), "--compile", compile_mode, "--max-steps", str(max_steps),
            "--repeats", str(repeats), "--no-progress", "--out-dir", str(out_dir), "--tag", f"ours_gen{gen}_b{batch}",
            *(["--prompt-len", str(prompt_len)] if prompt_len else []),
            *(["--warmup-steps", str(warmup_steps)] if warmup_steps is not None else [])]


def _setting_name(row: dict[str, Any], cuda: bool = True) -> str:
    cache = row.get("cache")
    if cache is None:
        return "uncached, 1 token/step" if row.get("decoding", "fixed") == "fixed" else "uncached, real rate"
    policy = cache["policy"]
    if policy in ("block-prefix", "block-dual"):
        name = policy
    else:
        kr = cache["response_interval"]
        name = {("paper", 8): "paper (Kp 100, Kr 8, r 0.25)", ("frontier", 8): "default frontier (Kr 8)",
                ("frontier", 2): "kr2 (frontier, Kr 2)"}.get((policy, kr), f"{policy}, Kr {kr}")
    return name + (", compiled" if cache.get("compile") else ", CUDA graphs" if cuda else "")


def _cached_step_ms(row: dict[str, Any]) -> float | None:
    """The measured time of the run's cached step: partial (feature cache) or block (block caches)."""
    cache, ms = row.get("cache"), row.get("step_ms") or {}
    if cache is None:
        return None
    return ms.get("block") if cache["policy"] in ("block-prefix", "block-dual") else ms.get("partial")


def rows_from_bench(report: dict[str, Any]) -> list[dict[str, Any]]:
    """real_rate rows (FIELDS) from one `dllm-cache bench` report."""
    meta = report["meta"]
    gen = meta["workload"]["gen_len"]
    floor = meta.get("weight_floor_ms")
    out = []
    for r in report["results"]:
        steps = sum((r.get("step_counts") or {}).values()) or None
        step = _cached_step_ms(r)
        cuda = str(meta.get("device", "")).startswith("cuda")
        out.append({
            "impl": "ours", "setting": _setting_name(r, cuda), "workload": meta["workload"]["name"], "batch": r["batch_size"],
            "gen_length": gen, "tokens_per_step": gen / steps if steps else None, "seconds": r["latency_s"],
            "tokens_per_s": r["tokens_per_s"], "speedup": r["speedup"], "device": meta["device_name"],
            "floor_ratio": step / floor if (step and floor and r["batch_size"] == 1) else None,
        })
    return out


# ----------------------------------------------------------------------------- peers


def peer_settings(trace_row: dict[str, Any], batch: int) -> dict[str, list[dict[str, Any]]]:
    """eval/peers/run.py worker settings: Fast-dLLM dual and prefix at the real rate (batch 1 only: its
    generate functions build x as (1, prompt + gen)), the original dLLM-Cache at one token per step."""
    out: dict[str, list[dict[str, Any]]] = {}
    if batch == 1:  # first: the rows the targets compare with; the original at one token per step is the slow one
        out["fast-dllm"] = [{"setting": f"{kind} cache + threshold {THRESHOLD:g}, real rate", "function": fn,
                             "threshold": THRESHOLD, "trace_row": trace_row}
                            for kind, fn in (("dual", "generate_with_dual_cache"), ("prefix", "generate_with_prefix_cache"))]
    out["dllm-cache-original"] = [{"setting": "cache (Kp 100, Kr 8, r 0.25), 1 token/step", "peer_cache": {
        "prompt_interval": PAPER["prompt_interval"], "response_interval": PAPER["response_interval"],
        "transfer_ratio": PAPER["transfer_ratio"]}}]
    return out


def run_peers(args: argparse.Namespace) -> Path:
    import torch

    from dllm_cache.bench.factory import random_prompts
    from dllm_cache.models import tiny
    from dllm_cache.sampling.trace import read_trace
    from eval.peers import run as peers

    trace = read_trace(args.trace or trace_file(args.gen))
    gen, block = trace["meta"]["gen_length"], trace["meta"]["block_length"]
    config = tiny.llada_8b_config() if args.shape == "llada-8b" else tiny.tiny_llada_config()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    prompts = random_prompts(config, args.batch, args.prompt_len, args.seed).tolist()
    workload = {"prompt_len": args.prompt_len, "gen_len": gen, "block_length": block, "steps": gen}
    settings = peer_settings(trace["rows"][0], args.batch)
    if args.skip:
        settings = {k: v for k, v in settings.items() if k not in args.skip}
    repos = {"dllm-cache-original": args.dllm_cache_repo, "fast-dllm": args.fast_dllm_repo}
    rows = []
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    path = args.out_dir / f"peers_gen{gen}_b{args.batch}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after each implementation: a later one cut by a time limit leaves the earlier rows
        out = {"gen_length": gen, "batch": args.batch, "workload": WORKLOAD, "prompt_len": args.prompt_len,
               "device": device_name, "trace": str(args.trace or trace_file(args.gen)), "rows": rows}
        path.write_text(json.dumps(out, indent=1) + "\n")

    for impl, impl_settings in settings.items():
        if not repos[impl]:
            continue
        spec = {"impl": impl, "settings": impl_settings, "config": config.to_dict(), "device": device, "dtype": dtype,
                "seed": args.seed, "std": 0.02, "prompts": prompts, "workload": workload, "repeats": args.repeats,
                "dllm_cache_repo": args.dllm_cache_repo, "fast_dllm_repo": args.fast_dllm_repo}
        print(f"[real_rate] {impl}: {len(impl_settings)} settings, gen {gen}, batch {args.batch}", file=sys.stderr)
        for r in peers._spawn(impl, spec, args.timeout):
            rows.append({"impl": impl, "setting": r["setting"], "seconds": r.get("seconds"),
                         "all_seconds": r.get("all_seconds"), "steps": r.get("steps"), "error": r.get("error"),
                         "replayed_counts": r.get("replayed_counts")})
        write()
    write()
    return path


def rows_from_peers(data: dict[str, Any], baseline_s: float | None) -> list[dict[str, Any]]:
    gen, batch = data["gen_length"], data["batch"]
    out = []
    for r in data["rows"]:
        if not r.get("seconds"):
            continue
        out.append({"impl": r["impl"], "setting": r["setting"], "workload": data["workload"], "batch": batch,
                    "gen_length": gen, "tokens_per_step": gen / r["steps"] if r.get("steps") else None,
                    "seconds": r["seconds"], "tokens_per_s": batch * gen / r["seconds"],
                    "speedup": baseline_s / r["seconds"] if baseline_s else None, "device": data["device"],
                    "floor_ratio": None})
    return out


# ----------------------------------------------------------------------------- report


def collect(raw: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """All rows (ours first, then the peers, per (gen, batch)), the bench metas, and notes (peer errors)."""
    rows, metas, notes = [], [], []
    baselines: dict[tuple[int, int], float] = {}
    for path in sorted(raw.glob("ours_gen*_b*.json"), key=_order):
        report = json.loads(path.read_text())
        metas.append(report["meta"])
        for r in rows_from_bench(report):
            rows.append(r)
            if r["setting"] == "uncached, 1 token/step":
                baselines[(r["gen_length"], r["batch"])] = r["seconds"]
    for path in sorted(raw.glob("logged_gen*_b*.json")):  # rows transcribed from a printed report whose JSON was lost
        data = json.loads(path.read_text())
        rows += [{k: r[k] for k in FIELDS} for r in data["rows"]]
        notes.append(f"{path.name}: {data['source']}")
    for path in sorted(raw.glob("peers_gen*_b*.json"), key=_order):
        data = json.loads(path.read_text())
        rows += rows_from_peers(data, baselines.get((data["gen_length"], data["batch"])))
        for r in data["rows"]:
            if r.get("error"):
                notes.append(f"{r['impl']} {r['setting']} (gen {data['gen_length']}, batch {data['batch']}): "
                             f"{r['error'].strip().splitlines()[-1][:200]}")
    key = {(g, b): i for i, (g, b) in enumerate(sorted({(r["gen_length"], r["batch"]) for r in rows},
                                                       key=lambda x: (x[1], x[0])))}
    rows.sort(key=lambda r: key[(r["gen_length"], r["batch"])])  # stable: ours before peers in each group
    return rows, metas, notes


def add_rows(source: Path, policies: list[str], suffix: str, why: str, raw: Path = RAW) -> Path:
    """Copy the rows of `policies` from a later bench run into real_rate_raw/<its tag>_<suffix>.json. Each row keeps
    the speedup over its own run's uncached baseline; that run's uncached rows stay out (one baseline per table)."""
    report = json.loads(source.read_text())
    keep = [r for r in report["results"] if r["cache"] and r["cache"].get("policy") in policies]
    if not keep:
        raise SystemExit(f"{source}: no rows of policy {policies}")
    report["results"] = keep
    report["meta"]["notes"].append(f"real_rate: only the {', '.join(policies)} rows of this run ({source.name}) are kept; "
                                   f"their speedups are over that run's own uncached baseline. {why}".strip())
    out = raw / f"{report['meta']['tag']}_{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def _order(path: Path) -> tuple[int, int, str]:
    """(batch, gen, file name): a run's main file (ours_gen512_b1) before the rows added to it by later runs
    (ours_gen512_b1_paper)."""
    stem = path.stem.split("_")  # ours_gen256_b1[_suffix]
    return int(stem[2][1:]), int(stem[1][3:]), "_".join(stem[3:])


TARGETS = {(256, 1): 20.0, (512, 1): 30.0, (1024, 1): 50.0, (256, 16): 40.0}


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, one line each: best speedup per (gen, batch), ours vs Fast-dLLM's best,
    the best batch-1 cached step against 1.5x the floor."""
    out = []
    for (gen, batch), target in TARGETS.items():
        group = [r for r in rows if (r["gen_length"], r["batch"]) == (gen, batch) and r["speedup"]]
        ours = max((r for r in group if r["impl"] == "ours"), key=lambda r: r["speedup"], default=None)
        if ours is None:
            out.append(f"- gen {gen}, batch {batch}: not measured (target >= {target:g}x).")
            continue
        line = (f"- gen {gen}, batch {batch}: best {ours['speedup']:.1f}x ({ours['setting']}, "
                f"{ours['tokens_per_step']:.2f} tokens/step): target >= {target:g}x "
                f"{'MET' if ours['speedup'] >= target else 'MISSED'}")
        peer = max((r for r in group if r["impl"] == "fast-dllm"), key=lambda r: r["speedup"], default=None)
        if peer is not None:
            ratio = ours["speedup"] / peer["speedup"]
            line += (f"; {ratio:.2f}x Fast-dLLM's best ({peer['setting']}, {peer['speedup']:.1f}x): target >= 5x "
                     f"{'MET' if ratio >= 5 else 'MISSED'}")
        elif batch > 1:
            line += "; no Fast-dLLM row: its generate functions build x as (1, prompt + gen), batch 1 only"
        else:
            line += "; Fast-dLLM not measured in this run (no peers file for it)"
        out.append(line + ".")
    steps = [r for r in rows if r["floor_ratio"]]
    if steps:
        best = min(steps, key=lambda r: r["floor_ratio"])
        out.append(f"- best batch-1 cached step: {best['floor_ratio']:.2f}x the weight-read floor ({best['setting']}, "
                   f"gen {best['gen_length']}): target <= 1.5x {'MET' if best['floor_ratio'] <= 1.5 else 'MISSED'}.")
    return out


def markdown(rows: list[dict[str, Any]], metas: list[dict[str, Any]], notes: list[str]) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = ["# Speed at the real decoding rate (issue 25)", "",
             "LLaDA-8B shape, random bf16 weights identical across implementations (seeded by parameter name), "
             f"GSM8K shape (prompt {PROMPT_LEN}, block 32), decoding steps replayed from "
             "`eval/results/traces_real-llada_gen*.json` (eval/real_rate/traces.py: answer at ~11 steps per 32-token "
             "block, end-of-text blocks in one step as the proxy traces show; gen 256 at 3.2 tokens per step, "
             "LLaDA-8B-Instruct's published 3.01-3.25). Speedup: over our uncached run at one token per step of the "
             "same gen length and batch. floor_ratio: the run's cached step (ms) over the weight-read floor at "
             "this GPU's measured bandwidth (ours, batch 1).", ""]
    for m in metas:
        w = m["workload"]
        lines.append(f"- ours gen {w['gen_len']}, batch {m['batch_sizes']}: {m['device_name']}, torch {m['torch']}; "
                     f"peaks {f(m.get('peak_tbps'), '.2f')} TB/s, {f(m.get('peak_tflops'), '.0f')} TFLOP/s "
                     f"({m.get('peaks_source', 'given')}); weight-read floor {f(m.get('weight_floor_ms'), '.2f')} ms "
                     f"({m.get('weight_bytes', 0) / 1e9:.2f} GB of weights); {m['repeats']} timed runs per row (median)")
    lines += ["", "| gen | batch | impl | setting | tokens/step | seconds | tokens/s | speedup | floor ratio | device |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['gen_length']} | {r['batch']} | {r['impl']} | {r['setting']} | "
                     f"{f(r['tokens_per_step'], '.2f')} | {f(r['seconds'], '.3f')} | {f(r['tokens_per_s'], '.1f')} | "
                     f"{f(r['speedup'], '.2f')}{'x' if r['speedup'] else ''} | {f(r['floor_ratio'], '.2f')} | "
                     f"{r['device']} |")
    lines += ["", "Targets (issue 25; why each is missed, with the step times: docs/speed.md):", *verdicts(rows)]
    if notes:
        lines += ["", "Notes (peers' errors, transcribed rows):", *(f"- {n}" for n in notes)]
    lines += ["", "Commands (one H200, `bash eval/real_rate/gpu.sh <stage>`; the peers' code from clones in `peers/`, "
              "see eval/peers/run.py):", "", "```", *STAGE_COMMANDS, "```", ""]
    return "\n".join(lines)


STAGE_COMMANDS = [
    "PYTHONPATH=. python -m eval.real_rate.traces                      # CPU, seconds",
    "bash eval/real_rate/gpu.sh gen256    # ours b1 (CUDA graphs and compiled); its peers and b16 steps timed out",
    "bash eval/real_rate/gpu.sh final     # Fast-dLLM b1; ours b16 gen 256, b1 gen 512 / 1024 (frontier, block-dual)",
    "bash eval/real_rate/gpu.sh long      # profile; paper + block-prefix at gen 512 / 1024 (add-rows); Fast-dLLM 512 / 1024",
    "bash eval/real_rate/gpu.sh b16       # paper + block-prefix at batch 16 (rows transcribed from the printed report)",
    "bash eval/real_rate/gpu.sh rest      # the original dLLM-Cache at gen 512 / 1024 (the gen-1024 file was not packed)",
    "PYTHONPATH=. python -m eval.real_rate report",
]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["gen_length"], r["batch"]) for r in rows}, key=lambda x: (x[1], x[0]))
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 5), squeeze=False)
    colors = {"ours": "tab:green", "dllm-cache-original": "tab:blue", "fast-dllm": "tab:orange"}
    for ax, (gen, batch) in zip(axes[0], groups):
        sel = [r for r in rows if (r["gen_length"], r["batch"]) == (gen, batch) and r["speedup"]]
        ax.barh(range(len(sel)), [r["speedup"] for r in sel], color=[colors.get(r["impl"], "grey") for r in sel])
        ax.set_yticks(range(len(sel)), [f"{r['impl']}: {r['setting']}" for r in sel], fontsize=6)
        for i, r in enumerate(sel):
            ax.text(r["speedup"], i, f" {r['speedup']:.1f}x @ {r['tokens_per_step']:.1f} tok/step"
                    if r["tokens_per_step"] else f" {r['speedup']:.1f}x", va="center", fontsize=6)
        target = TARGETS.get((gen, batch))
        if target:
            ax.axvline(target, color="red", lw=0.8, ls="--")
        ax.invert_yaxis()
        ax.set(xlabel="speedup over uncached, 1 token/step", title=f"gen {gen}, batch {batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(raw: Path, out: Path) -> list[dict[str, Any]]:
    rows, metas, notes = collect(raw)
    rows = [{k: r[k] for k in FIELDS} for r in rows]
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, metas, notes))
    plot(rows, out.with_suffix(".png"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("ours", help="dllm-cache bench at the real rate -> real_rate_raw/ours_gen<G>_b<B>.*")
    pe = sub.add_parser("peers", help="Fast-dLLM and the original dLLM-Cache -> real_rate_raw/peers_gen<G>_b<B>.json")
    for q in (o, pe):
        q.add_argument("--gen", type=int, default=256)
        q.add_argument("--batch", type=int, default=1)
        q.add_argument("--repeats", type=int, default=2)
        q.add_argument("--trace", type=Path, help="default: eval/results/traces_real-llada_gen<G>.json")
        q.add_argument("--shape", default="llada-8b", choices=("llada-8b", "tiny-llada"))
        q.add_argument("--out-dir", type=Path, default=RAW)
    o.add_argument("--compile", choices=("off", "on", "both"), default="on")
    o.add_argument("--max-steps", type=int, default=33, help="window of the uncached one-token-per-step baseline")
    o.add_argument("--prompt-len", type=int, help=f"default {PROMPT_LEN} (the gsm8k workload)")
    o.add_argument("--policy", nargs="+", default=["paper", "frontier", "block-prefix", "block-dual"])
    o.add_argument("--response-interval", type=int, nargs="+", default=[8, 2])
    o.add_argument("--warmup-steps", type=int, help="untimed warm-up steps per run (default: the bench's)")
    pe.add_argument("--dllm-cache-repo")
    pe.add_argument("--fast-dllm-repo")
    pe.add_argument("--skip", nargs="*", default=[], choices=("dllm-cache-original", "fast-dllm"))
    pe.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    pe.add_argument("--device")
    pe.add_argument("--seed", type=int, default=0)
    pe.add_argument("--timeout", type=float, default=None)
    a = sub.add_parser("add-rows", help="keep some policies' rows of a later bench run beside a run's main file: "
                                        "real_rate_raw/ours_gen<G>_b<B>_<suffix>.json")
    a.add_argument("source", type=Path, help="a bench report (ours_gen<G>_b<B>.json of another --out-dir)")
    a.add_argument("--policy", nargs="+", required=True, help="cache policies whose rows are kept")
    a.add_argument("--suffix", required=True)
    a.add_argument("--why", default="", help="a sentence for the report's notes (e.g. why other rows were dropped)")
    a.add_argument("--raw", type=Path, default=RAW)
    r = sub.add_parser("report", help="real_rate_raw/* -> real_rate.json / .md / .png")
    r.add_argument("--raw", type=Path, default=RAW)
    r.add_argument("--out", type=Path, default=RESULTS / "real_rate.json")
    args = p.parse_args(argv)
    if args.cmd == "ours":
        from dllm_cache.bench import cli as bench

        return bench.main(bench_argv(args.gen, args.batch, args.compile, args.repeats, args.out_dir, args.max_steps,
                                     args.shape, args.trace, args.prompt_len, tuple(args.policy),
                                     tuple(args.response_interval), args.warmup_steps))
    if args.cmd == "add-rows":
        print(add_rows(args.source, args.policy, args.suffix, args.why, args.raw))
        return 0
    if args.cmd == "peers":
        print(run_peers(args))
        return 0
    rows = report(args.raw, args.out)
    print(args.out.with_suffix(".md").read_text())
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
