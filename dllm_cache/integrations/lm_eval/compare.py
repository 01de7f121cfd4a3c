"""Speed beside accuracy in lm-eval's results, and `dllm-cache eval --compare`.

`with_speed(simple_evaluate)` wraps lm-eval's `simple_evaluate` (the launcher installs it for the
CLI run): the per-task speed record the `dllm_cache` model puts in results["config"] is copied
into results["results"][task] under the filter name `speed`, so lm-eval's JSON and its printed
table show wall time, tokens/s, forwards by step kind, fraction recomputed and GFLOPs per request
next to the accuracy of the same task. With `compare=True` the model is loaded once and the same
examples run uncached, then cached; the cached run's results are returned (lm-eval saves and
prints them as usual) with the uncached one and the side-by-side summary under
results["dllm_cache_compare"]. The summary pairs the two runs example by example: for every score
that is right-or-wrong per example (exact_match, acc, ...), the examples right only cached, right only
uncached, and the exact McNemar p (`dllm_cache.analysis.paired`): two runs over the same examples are
strongly correlated, so two scores with their stderr cannot say whether a small difference is real.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

from .speed import table_rows

SPEED_FILTER = "speed"


def add_speed_rows(results: dict[str, Any]) -> None:
    """Copy results["config"]["dllm_cache_speed"][task] into results["results"][task]."""
    speed = (results.get("config") or {}).get("dllm_cache_speed") or {}
    for task, summary in speed.items():
        if task in results.get("results", {}):
            for metric, value in table_rows(summary).items():
                results["results"][task][f"{metric},{SPEED_FILTER}"] = value


def accuracy(task_results: dict[str, Any]) -> dict[str, float]:
    """The task's score entries ("metric,filter" -> value), without stderr, alias or speed rows."""
    return {
        key: float(value) for key, value in task_results.items()
        if "," in key and not key.split(",", 1)[0].endswith("_stderr") and not key.endswith(f",{SPEED_FILTER}")
        and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _model_args(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(str(value))


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _right_per_example(samples: list[dict[str, Any]]) -> dict[str, dict[int, bool]]:
    """"metric,filter" -> {doc_id: right?} for the scores that are 0 or 1 on every logged example
    (lm-eval's samples: one record per example and filter, each metric's value under its name)."""
    out: dict[str, dict[int, bool]] = {}
    graded: set[str] = set()  # scores seen with another value: not right-or-wrong, not paired
    for record in samples:
        for metric in record.get("metrics", []):
            key, value = f"{metric},{record.get('filter', 'none')}", record.get(metric)
            if isinstance(value, numbers.Real) and value in (0, 1):  # numpy scalars included
                out.setdefault(key, {})[record["doc_id"]] = bool(value)
            else:
                graded.add(key)
    return {k: v for k, v in out.items() if k not in graded}


def paired_scores(uncached: list[dict[str, Any]], cached: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per right-or-wrong score: the exact McNemar test of the cached run against the uncached one on the
    examples both logged (by doc_id): `dllm_cache.analysis.paired.paired_object`."""
    from dllm_cache.analysis.paired import paired_object

    right_u, right_c = _right_per_example(uncached), _right_per_example(cached)
    out = {}
    for key in right_c.keys() & right_u.keys():
        docs = sorted(right_c[key].keys() & right_u[key].keys())
        out[key] = paired_object([i for i, d in enumerate(docs) if right_c[key][d]],
                                 [i for i, d in enumerate(docs) if right_u[key][d]], len(docs))
    return out


def comparison(uncached: dict[str, Any], cached: dict[str, Any]) -> dict[str, Any]:
    """Per task: each score uncached / cached, both speed records, wall-clock speedup, FLOP cut, and (when both
    runs logged their samples) the paired test of each right-or-wrong score."""
    speed_u = uncached["config"].get("dllm_cache_speed", {})
    speed_c = cached["config"].get("dllm_cache_speed", {})
    samples_u, samples_c = uncached.get("samples") or {}, cached.get("samples") or {}
    out = {}
    for task in cached["results"]:
        if task not in uncached["results"]:
            continue
        scores_u, scores_c = accuracy(uncached["results"][task]), accuracy(cached["results"][task])
        su, sc = speed_u.get(task, {}), speed_c.get(task, {})
        out[task] = {
            "scores": {m: {"uncached": scores_u.get(m), "cached": scores_c[m]} for m in scores_c},
            "paired": paired_scores(samples_u.get(task, []), samples_c.get(task, [])),
            "speed": {"uncached": su, "cached": sc},
            "speedup": _ratio(su.get("wall_s"), sc.get("wall_s")),
            "flop_cut": _ratio(su.get("flops"), sc.get("flops")),
        }
    return out


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def format_comparison(summary: dict[str, Any]) -> str:
    """Markdown table: scores, wall time, tokens/s and FLOPs, uncached vs cached, per task."""
    lines = ["dllm-cache --compare: the same examples, one loaded model, uncached then cached",
             "", "| task | metric | uncached | cached |", "|---|---|---:|---:|"]
    for task, entry in summary.items():
        for metric, pair in entry["scores"].items():
            lines.append(f"| {task} | {metric} | {_fmt(pair['uncached'])} | {_fmt(pair['cached'])} |")
            p = entry.get("paired", {}).get(metric)
            if p is not None:
                lines.append(f"| {task} | {metric}: right only cached / only uncached, exact McNemar p (n = {p['n']}) | | "
                             f"{p['cached_right_uncached_wrong']} / {p['cached_wrong_uncached_right']}, "
                             f"p {p['p_value']:.3g} |")
        su, sc = entry["speed"]["uncached"], entry["speed"]["cached"]
        gflops = [s.get("flops_per_request") and s["flops_per_request"] / 1e9 for s in (su, sc)]
        lines += [
            f"| {task} | wall s | {_fmt(su.get('wall_s'), '.2f')} | {_fmt(sc.get('wall_s'), '.2f')} |",
            f"| {task} | gen tok/s | {_fmt(su.get('gen_tokens_per_s'), '.1f')} | {_fmt(sc.get('gen_tokens_per_s'), '.1f')} |",
            f"| {task} | GFLOPs/request | {_fmt(gflops[0], '.3f')} | {_fmt(gflops[1], '.3f')} |",
            f"| {task} | recomputed | - | {_fmt(sc.get('recompute_fraction'), '.1%')} |",
            f"| {task} | speedup (wall), FLOP cut | | {_fmt(entry['speedup'], '.2f')}x, {_fmt(entry['flop_cut'], '.2f')}x |",
        ]
    return "\n".join(lines)


def _run_compare(simple_evaluate: Callable[..., Any], kwargs: dict[str, Any], report: dict[str, Any]) -> Any:
    if kwargs.get("model") != "dllm_cache":
        raise ValueError(f"--compare needs --model dllm_cache (got {kwargs.get('model')!r})")
    if kwargs.get("use_cache"):
        raise ValueError("--compare with --use_cache would serve the cached run from the uncached run's "
                         "responses; drop --use_cache")
    from .model import DLLMCacheLM

    model_args = _model_args(kwargs.get("model_args"))
    # Built with the cache on (so its config is parsed and checked), then switched per run.
    lm = DLLMCacheLM.create_from_arg_obj(
        {**model_args, "cache": True},
        {k: kwargs.get(k) for k in ("batch_size", "max_batch_size", "device")},
    )
    runs = {}
    wants_samples = bool(kwargs.get("log_samples"))  # the pairing needs them; kept in the output only if asked
    for label, on in (("uncached", False), ("cached", True)):
        lm.set_cache(on)
        lm.reset_speed()
        results = simple_evaluate(**{**kwargs, "model": lm, "log_samples": True})
        if results is not None:  # None on ranks other than 0
            results["config"]["model"] = "dllm_cache"
            results["config"]["model_args"] = kwargs.get("model_args")
            add_speed_rows(results)
            runs[label] = results
    if not runs:
        return None
    cached = runs["cached"]
    summary = comparison(runs["uncached"], cached)
    if not wants_samples:
        for results in runs.values():
            results.pop("samples", None)
    cached["dllm_cache_compare"] = {"uncached_results": runs["uncached"]["results"], "tasks": summary}
    report["compare"] = format_comparison(summary)
    return cached


def with_speed(simple_evaluate: Callable[..., Any], *, compare: bool = False,
               report: dict[str, Any] | None = None) -> Callable[..., Any]:
    """`simple_evaluate` that adds the speed rows (and, with compare, runs both settings);
    `report["compare"]` receives the side-by-side table to print after lm-eval's own."""
    report = report if report is not None else {}

    @functools.wraps(simple_evaluate)
    def run(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("simple_evaluate is called by keyword by lm-eval's CLI")
        if compare:
            return _run_compare(simple_evaluate, kwargs, report)
        results = simple_evaluate(**kwargs)
        if results is not None:
            add_speed_rows(results)
        return results

    return run
