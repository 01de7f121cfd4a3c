"""How far the response's Value vectors drift per step on the proxy tasks, to calibrate
CacheConfig.response_drift_threshold.

    PYTHONPATH=. python -m eval.tiny.drift_profile --model eval/tiny/model --n 16 --verify
    # -> eval/results/drift_profile.{json,md}
    PYTHONPATH=. python -m eval.tiny.drift_profile --from-json eval/results/drift_profile.json \
        --targets 6 --out /tmp/p.json   # new thresholds from the stored traces, no generation

Runs the paper policy (Kp 100, Kr 8, ratio 0.25) on the first n held-out problems of each task
(arith and multihop, at eval.tiny.evaluate's GEN_SETTINGS) inside `dllm_cache.measure_drift`, so
every partial step keeps its drift: the mean 1 - cos(V_new, V_cached) over response rows and
V-verify layers, the value a drift-triggered config compares with its threshold. Reports the
percentiles of that drift by steps since the last response refresh (1 .. Kr - 1), and for each
target (default 4, 8, 12) the threshold whose drift-triggered schedule (`--min-interval`,
`--max-interval`: the frontier rows' 2 and 16) refreshes the response once per `target` steps on
average.

Two views. The trigger reads one drift per step for the whole batch, the mean over its rows, so
the threshold depends on the batch: each example is generated alone (batch 1: "per example"),
and averaging the examples' drift at each step gives exactly the drift a batch of them would see
on the same fixed schedule ("batch mean"; eval.frontier runs batches of 500 / 100, closer to this).

A threshold's schedule is predicted by replaying the profile (`replay_refreshes`): the library's
own rule (dllm_cache.engine.drift.plan_drift_step) walks the steps, each step measuring the drift the
profile measured at that step (a step the fixed schedule refreshed, which measured none, takes the
previous step's). The drift a step measures depends on which step it is (what the sampler
unmasks) far more than on the steps since the refresh: V-verify overwrites the cached Values every
step, so the drift is the step's change, not the staleness. (Drawing each step's drift
independently from the distribution at its steps since refresh predicted 4 where a run took 6.7.)
`--verify` runs the drift-triggered config at each chosen threshold (per example: each example
alone; batch mean: all n in one batch) and records the steps per response refresh it took.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import tasks
from .evaluate import GEN_SETTINGS, accuracy_of, generate_texts, load_model, parse_gen

RESULTS = Path(__file__).resolve().parents[1] / "results"
TASK_NAMES = {"arith": "arith", "hotpot": "multihop"}  # family -> name in the reports (as eval.frontier)
PERCENTILES = (10, 25, 50, 75, 90)
TARGETS = (4.0, 8.0, 12.0)
VIEWS = ("per_example", "batch_mean")


# ----------------------------------------------------------------------------- analysis
def by_since(since: list[int], drift: list[float]) -> dict[int, np.ndarray]:
    """Drift values grouped by steps since the last response refresh, each group sorted."""
    s, d = np.asarray(since), np.asarray(drift, dtype=np.float64)
    return {int(k): np.sort(d[s == k]) for k in np.unique(s)}


def percentile_table(groups: dict[int, np.ndarray], qs=PERCENTILES) -> dict[int, dict]:
    """{since: {"n", "p10", ...}} over each group."""
    return {k: {"n": len(v), **{f"p{q}": float(np.percentile(v, q)) for q in qs}} for k, v in groups.items()}


def drift_by_step(trace: dict, steps: int) -> np.ndarray:
    """(steps,) the drift each step of a generation measured; a step the trace lacks (a response
    refresh, which measures none) takes the previous step's, step 0 takes 0."""
    measured = dict(zip(trace["step"], trace["drift"]))
    out = np.zeros(steps)
    for step in range(1, steps):
        out[step] = measured.get(step, out[step - 1])
    return out


def replay_refreshes(drift: np.ndarray, config) -> int:
    """Response refreshes (step 0 included) a drift-triggered `config` makes over len(drift) steps
    when step s measures drift[s]: plan_drift_step, the rule the cache runs."""
    from dllm_cache.engine.drift import plan_drift_step

    since, last, refreshes = 0, 0.0, 0
    for step in range(len(drift)):
        plan, _ = plan_drift_step(step, since + 1, last, config, config.response_interval)
        if plan.refresh_response:
            refreshes, since, last = refreshes + 1, 0, 0.0  # a refresh measures no drift
        else:
            since, last = since + 1, float(drift[step])
    return refreshes


def steps_per_refresh(series: list[np.ndarray], config) -> float:
    """Steps per response refresh over the generations whose per-step drift is `series`."""
    return sum(len(d) for d in series) / sum(replay_refreshes(d, config) for d in series)


def round_sig(x: float, digits: int = 3, up: bool = False) -> float:
    """x to `digits` significant digits (rounded up with `up`: the result is never below x)."""
    if x == 0:
        return 0.0
    places = digits - 1 - int(math.floor(math.log10(abs(x))))
    return math.ceil(x * 10**places) / 10**places if up else round(x, places)


def threshold_for(series: list[np.ndarray], target: float, min_interval: int, longest: int) -> dict:
    """The threshold (3 significant digits) whose replayed steps per refresh is closest to `target`.

    A higher threshold triggers less, so a bisection over the measured drifts (and 0) finds it.
    threshold None when the target is out of reach: below what a threshold of 0 gives, or above
    what the longest interval allows."""
    from dllm_cache import CacheConfig

    base = CacheConfig(response_interval=longest, response_min_interval=min_interval, response_drift_threshold=0.0)

    def predict(t: float) -> float:
        return steps_per_refresh(series, replace(base, response_drift_threshold=min(t, 2.0)))

    candidates = np.unique(np.concatenate([[0.0], *series]))
    lo_pred, hi_pred = predict(0.0), predict(2.0)  # 2: above any drift (1 - cos <= 2): never triggers
    out = {"target": target, "threshold": None, "predicted_steps_per_refresh": None,
           "reachable": [round(lo_pred, 3), round(hi_pred, 3)]}
    if not lo_pred <= target <= hi_pred:
        return out
    lo, hi = 0, len(candidates) - 1  # first candidate whose prediction reaches the target
    if predict(candidates[hi]) < target:  # only a threshold above every measured drift (never triggers)
        best = round_sig(float(candidates[hi]) * (1 + 1e-9), up=True)
        return {**out, "threshold": best, "predicted_steps_per_refresh": round(predict(best), 3)}
    while lo < hi:
        mid = (lo + hi) // 2
        if predict(candidates[mid]) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = float(candidates[lo])
    if lo and abs(predict(candidates[lo - 1]) - target) < abs(predict(best) - target):
        best = float(candidates[lo - 1])
    best = round_sig(best)
    return {**out, "threshold": best, "predicted_steps_per_refresh": round(predict(best), 3)}


def batch_mean_trace(traces: list[dict]) -> dict:
    """The drift a batch of these generations sees on the same fixed schedule: at each step, the mean
    of the examples' drift (the trigger's drift is the mean over the batch's rows and tokens)."""
    first = traces[0]
    for t in traces[1:]:
        if t["step"] != first["step"] or t["since_refresh"] != first["since_refresh"]:
            raise ValueError("the examples' traces cover different steps; a batch mean needs one shared fixed schedule")
    drift = np.mean([t["drift"] for t in traces], axis=0)
    return {"step": list(first["step"]), "since_refresh": list(first["since_refresh"]), "drift": drift.tolist()}


def analyse(traces: list[dict], steps: int, targets, min_interval: int, longest: int) -> dict:
    """Percentiles by steps since refresh and the threshold per target, for both views."""
    mean = batch_mean_trace(traces)
    views = {
        "per_example": (traces, [drift_by_step(t, steps) for t in traces]),
        "batch_mean": ([mean], [drift_by_step(mean, steps)]),
    }
    out = {}
    for view, (measured, series) in views.items():
        groups = by_since([s for t in measured for s in t["since_refresh"]], [d for t in measured for d in t["drift"]])
        out[view] = {
            "batch": 1 if view == "per_example" else len(traces),
            "percentiles": percentile_table(groups),
            "thresholds": [threshold_for(series, t, min_interval, longest) for t in targets],
        }
    return out


# ----------------------------------------------------------------------------- runs
def profile_task(model, tok, family: str, examples: list[dict], *, policy, settings: dict, device: str,
                 progress: bool = True) -> tuple[list[dict], list[str]]:
    """Each example generated alone under `policy` inside measure_drift -> (its drift trace, text)."""
    from dllm_cache import cache_enabled, cache_stats, measure_drift

    traces, texts = [], []
    with cache_enabled(model, policy), measure_drift(model):
        for ex in tqdm(examples, desc=f"profile {TASK_NAMES[family]}", disable=not progress):
            cache_stats(model, reset=True)
            prompt = tasks.prompt_and_target(family, ex)[0]
            texts += generate_texts(model, tok, [prompt], device=device, settings=settings, batch_size=1)
            trace = cache_stats(model).get("drift", {}).get("cond")
            if trace is None or not trace["drift"]:
                raise RuntimeError(f"no step measured a drift on {family} example {len(traces)}: does the policy "
                                   f"have partial steps? ({settings['steps']} steps, Kr {policy.response_interval})")
            traces.append({k: trace[k] for k in ("step", "since_refresh", "drift")})
    return traces, texts


def verify_threshold(model, tok, family: str, examples: list[dict], config, *, batch: int, settings: dict,
                     device: str) -> dict:
    """Run a drift-triggered config: the steps per response refresh it took, its refreshes and accuracy."""
    from dllm_cache import cache_enabled, cache_stats

    with cache_enabled(model, config):
        accuracy, _ = accuracy_of(model, tok, family, examples, device=device, settings=settings, batch_size=batch)
        stats = cache_stats(model)
    refreshes = stats["full_steps"] + stats["response_refresh_steps"]
    return {"steps_per_refresh": stats["steps"] / refreshes, "drift_refreshes": stats["drift_refreshes"],
            "generations": stats["generations"], "steps": stats["steps"], "accuracy": accuracy}


def run(model, tok, *, families, n: int, device: str, policy, gen: dict | None = None, progress: bool = True) -> dict:
    """Generate and keep the drift of every family -> report dict without thresholds (see `derive`)."""
    report = {"policy": _fields(policy), "n": n, "tasks": {}}
    for family in families:
        settings = {**GEN_SETTINGS[family], **(gen or {}).get(family, {})}
        examples = tasks.test_examples(family, n)
        t0 = time.time()
        traces, texts = profile_task(model, tok, family, examples, policy=policy, settings=settings, device=device,
                                     progress=progress)
        report["tasks"][family] = {
            "task": TASK_NAMES[family],
            "generation": settings,
            "n": len(examples),
            "accuracy": sum(tasks.is_correct(family, t, ex["answer"]) for t, ex in zip(texts, examples)) / len(examples),
            "profile_seconds": round(time.time() - t0, 1),
            # every example ran the same fixed schedule: steps shared, drift per example (4 significant digits;
            # thresholds are derived from these stored values, so --from-json re-derives the same ones)
            "traces": {"step": traces[0]["step"], "since_refresh": traces[0]["since_refresh"],
                       "drift": [[float(f"{d:.4g}") for d in t["drift"]] for t in traces]},
        }
    return report


def stored_traces(entry: dict) -> list[dict]:
    """A task's per-example traces, as `profile_task` returned them, from its report entry."""
    t = entry["traces"]
    return [{"step": t["step"], "since_refresh": t["since_refresh"], "drift": d} for d in t["drift"]]


def derive(report: dict, *, targets=TARGETS, min_interval: int = 2, longest: int = 16, model=None, tok=None,
           device: str = "cpu", progress: bool = True, save: Callable[[dict], None] | None = None) -> dict:
    """Percentiles and thresholds of every task in `report` from its traces; with a model, run the
    drift-triggered config at each threshold and record what it took (`verified`).

    A threshold the report already verified under the same intervals keeps its run (so an
    interrupted --verify resumes); `save(report)` is called after each run."""
    from dllm_cache import CacheConfig

    trigger = CacheConfig(**{**report["policy"], "response_interval": longest}, cuda_graphs=False,
                          response_drift_threshold=0.0, response_min_interval=min_interval)
    same_trigger = report.get("trigger") == {"response_min_interval": min_interval, "response_interval": longest}
    report.update(trigger={"response_min_interval": min_interval, "response_interval": longest}, targets=list(targets))
    for entry in report["tasks"].values():
        done = {(view, row["threshold"]): row["verified"] for view, v in entry.get("views", {}).items()
                for row in v["thresholds"] if "verified" in row} if same_trigger else {}
        entry["views"] = analyse(stored_traces(entry), entry["generation"]["steps"], targets, min_interval, longest)
        entry.pop("verify_seconds", None)  # older reports: now per run, in `verified`
        for view, v in entry["views"].items():
            for row in v["thresholds"]:
                if (view, row["threshold"]) in done:
                    row["verified"] = done[view, row["threshold"]]
    if model is None:
        return report
    for family, entry in report["tasks"].items():
        examples = tasks.test_examples(family, entry["n"])
        jobs = [(view, row) for view in VIEWS for row in entry["views"][view]["thresholds"]
                if row["threshold"] is not None and "verified" not in row]
        runs: dict = {}  # (view, threshold) -> its run: two targets may find the same threshold
        for view, row in tqdm(jobs, desc=f"verify {entry['task']}", disable=not progress):
            if (view, row["threshold"]) in runs:
                row["verified"] = runs[view, row["threshold"]]
                continue
            config = replace(trigger, response_drift_threshold=row["threshold"])
            batch = 1 if view == "per_example" else len(examples)
            t0 = time.time()
            row["verified"] = verify_threshold(model, tok, family, examples, config, batch=batch,
                                               settings=entry["generation"], device=device)
            row["verified"]["seconds"] = round(time.time() - t0, 1)
            runs[view, row["threshold"]] = row["verified"]
            if save is not None:
                save(report)
    return report


def _fields(config) -> dict:
    """The profiled policy's fields (CacheConfig keywords)."""
    return {k: v for k, v in asdict(config).items() if k in ("prompt_interval", "response_interval", "transfer_ratio",
                                                              "selection")}


# ----------------------------------------------------------------------------- report
def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _verify_seconds(entry: dict) -> str:
    runs = [r["verified"]["seconds"] for v in entry["views"].values() for r in v["thresholds"]
            if "seconds" in r.get("verified", {})]
    return f", verify {sum(runs):.0f} ({len(runs)} runs)" if runs else ""


def markdown(report: dict) -> str:
    pol, trig = report["policy"], report["trigger"]
    lines = [
        f"# Value drift per step on the proxy tasks ({report.get('model', '?')})", "",
        *([report["note"], ""] if report.get("note") else []),  # e.g. which weights a path held when profiled
        f"Policy profiled: Kp {pol['prompt_interval']}, Kr {pol['response_interval']}, ratio {pol['transfer_ratio']} "
        f"({pol['selection']} selection), n = {report['n']} held-out problems per task, {report.get('device', '?')} "
        f"{report.get('dtype', '')}, {report.get('threads', '?')} threads; seconds: "
        + ", ".join(f"{e['task']} profile {e['profile_seconds']}" + _verify_seconds(e) for e in report["tasks"].values())
        + ".", "",
        "Drift: mean 1 - cos(V_new, V_cached) over response rows and V-verify layers of a partial step, the value "
        "`response_drift_threshold` is compared with. `since`: steps since the last response refresh. Per example: "
        "each problem generated alone (batch 1). Batch mean: the problems' drift averaged per step, the drift one "
        "batch of them sees (the trigger reads the batch's mean; eval.frontier's batches are 500 / 100).", "",
    ]
    for entry in report["tasks"].values():
        g = entry["generation"]
        lines += [f"## {entry['task']} (gen {g['gen_length']}, steps {g['steps']}, block {g.get('block_length')}; "
                  f"accuracy {100 * entry['accuracy']:.1f}% of {entry['n']} under the profiled policy)", ""]
        head = ["since"] + [f"{v} {c}" for v in ("per example", "batch mean") for c in ("n", *(f"p{q}" for q in PERCENTILES))]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        per, mean = (entry["views"][v]["percentiles"] for v in VIEWS)
        for since in sorted(per, key=int):
            cells = [str(since)]
            for table in (per, mean):
                row = table.get(since)
                cells += ["-"] * (1 + len(PERCENTILES)) if row is None else \
                    [str(row["n"]), *(f"{row[f'p{q}']:.2e}" for q in PERCENTILES)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Thresholds for a drift-triggered response refresh (min interval {trig['response_min_interval']}, "
                  f"longest {trig['response_interval']}): steps per response refresh predicted from the profile, and "
                  "measured by a run at that threshold (`--verify`).", "",
                  "| target steps/refresh | per example: threshold | predicted | measured | "
                  "batch mean: threshold | predicted | measured |", "|---:|---:|---:|---:|---:|---:|---:|"]
        rows = zip(*(entry["views"][v]["thresholds"] for v in VIEWS))
        for per_row, mean_row in rows:
            cells = [f"{per_row['target']:g}"]
            for row in (per_row, mean_row):
                measured = row.get("verified", {}).get("steps_per_refresh")
                if row["threshold"] is None:
                    cells += [f"out of reach ({row['reachable'][0]:.3g}-{row['reachable'][1]:.3g})", "-", "-"]
                else:
                    cells += [f"{row['threshold']:g}", _num(row["predicted_steps_per_refresh"]), _num(measured)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Commands:", "", *(f"    {c}" for c in report.get("commands", [])), ""]
    return "\n".join(lines)


def write_outputs(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.tiny.drift_profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="exported proxy model folder (config, weights, tokenizer); "
                   "required unless --from-json without --verify")
    p.add_argument("--from-json", type=Path, default=None, help="derive thresholds from this report's traces "
                   "instead of generating (new --targets / intervals; --verify needs --model)")
    p.add_argument("--n", type=int, default=16, help="held-out problems per task (multihop prompts are 1k-4k tokens)")
    p.add_argument("--families", default="arith,hotpot", help="task families: arith, hotpot (= multihop)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--prompt-interval", type=int, default=100, help="Kp of the profiled (fixed) policy")
    p.add_argument("--response-interval", type=int, default=8, help="Kr of the profiled policy")
    p.add_argument("--transfer-ratio", type=float, default=0.25, help="ratio of the profiled policy")
    p.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS),
                   help="steps per response refresh to find thresholds for")
    p.add_argument("--min-interval", type=int, default=2, help="response_min_interval of the drift-triggered config")
    p.add_argument("--max-interval", type=int, default=16, help="response_interval (the longest) of the drift-triggered config")
    for fam in ("arith", "hotpot"):
        g = GEN_SETTINGS[fam]
        p.add_argument(f"--{fam}-gen", default=None, metavar="L,S,B",
                       help=f"{fam} gen_length,steps,block_length (default {g['gen_length']},{g['steps']},{g['block_length']})")
    p.add_argument("--verify", action="store_true", help="run the drift-triggered config at each threshold found")
    p.add_argument("--out", type=Path, default=RESULTS / "drift_profile.json", help="JSON report; the .md goes beside it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from dllm_cache import CacheConfig

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in TASK_NAMES]
    if unknown or not families:
        p.error(f"--families: unknown {unknown or families}; choose from {sorted(TASK_NAMES)}")
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    try:
        targets = tuple(float(t) for t in args.targets.split(","))
    except ValueError:
        p.error(f"--targets takes comma-separated numbers (steps per response refresh), got {args.targets!r}")
    if args.model is None and (args.from_json is None or args.verify):
        p.error("--model is required (to generate, or to --verify); only --from-json without --verify runs without one")
    if args.model is not None and not Path(args.model, "config.json").is_file():
        p.error(f"--model {args.model}: no config.json there; give an exported model folder such as eval/tiny/model")
    report = None
    if args.from_json is not None:
        try:
            report = json.loads(args.from_json.read_text())
            policy = CacheConfig(**report["policy"], cuda_graphs=False)
            report["tasks"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            p.error(f"--from-json {args.from_json}: not a drift_profile report ({err!r}); write one without --from-json")
    try:
        if report is None:
            policy = CacheConfig(prompt_interval=args.prompt_interval, response_interval=args.response_interval,
                                 transfer_ratio=args.transfer_ratio, cuda_graphs=False)
        if not policy.verifies_values:
            p.error("--transfer-ratio 0 recomputes nothing on partial steps, so no drift is measured; give it a budget")
        replace(policy, response_interval=args.max_interval, response_min_interval=args.min_interval,
                response_drift_threshold=0.0)  # the drift-triggered config the thresholds are for
    except ValueError as err:
        p.error(str(err))
    gen = {f: parse_gen(v, f"{f}-gen") for f, v in (("arith", args.arith_gen), ("hotpot", args.hotpot_gen)) if v}

    model = tok = None
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.model is not None:
        model, tok = load_model(args.model, args.device, getattr(torch, dtype_name))
    command = "PYTHONPATH=. python -m eval.tiny.drift_profile " + " ".join(argv if argv is not None else sys.argv[1:])
    if report is None:
        report = run(model, tok, families=families, n=args.n, device=args.device, policy=policy, gen=gen,
                     progress=not args.no_progress)
        report.update(model=args.model, device=args.device, dtype=dtype_name, torch=torch.__version__,
                      threads=torch.get_num_threads(), commands=[])
    report["commands"] = list(dict.fromkeys([*report.get("commands", []), command]))  # a resumed run: once
    derive(report, targets=targets, min_interval=args.min_interval, longest=args.max_interval,
           model=model if args.verify else None, tok=tok, device=args.device, progress=not args.no_progress,
           save=lambda r: write_outputs(r, args.out))
    write_outputs(report, args.out)
    print(markdown(report))
    print(f"[drift_profile] wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
