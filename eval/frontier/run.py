"""Quality/speed frontier of the cache on the trained proxy models.

For each proxy model (LLaDA, Dream) and proxy task (arith: GSM8K-style, gen 256; multihop:
HotpotQA-style, gen 32) every refresh setting is run on the whole held-out set: accuracy with a
95% Wilson interval, agreement with the uncached answers, analytic FLOPs per generation
(`dllm_cache.analysis.flops`, batch 1, each example's own prompt length) and measured GPU seconds per
generation (batched, wall clock between CUDA synchronisations, divided by n).

    PYTHONPATH=. python -m eval.frontier run --model eval/tiny/model --name llada
    PYTHONPATH=. python -m eval.frontier run --model eval/tiny/dream_model --name dream
    PYTHONPATH=. python -m eval.frontier report   # -> eval/results/frontier.{json,md,png}

`run` writes eval/results/frontier_<name>.json (every row, with sample outputs; it adds to a
frontier_<name>.json.gz instead when there is one, as the committed files are); `report` merges
those into the summary eval/results/frontier.json, a markdown table and a plot of accuracy
against measured speedup. CUDA graphs are off for every row (cached and uncached both eager),
so speedups compare the same execution mode; the LLaDA-8B / Dream-7B-shaped benches
(`dllm-cache bench`) measure graphs and compile.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dllm_cache.analysis.paired import correct_indices, paired_bounds, paired_object
from eval.tiny import tasks
from eval.tiny.evaluate import (
    GEN_SETTINGS,
    accuracy_of,
    load_model,
    mean_flops,
    parse_gen,
    prompt_lengths,
    sampler_settings,
    token_lengths,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"
TASK_NAMES = {"arith": "arith", "hotpot": "multihop"}  # family -> name in the reports
BATCH = {"arith": 500, "hotpot": 100}  # rows per generate() call on the GPU (hotpot prompts are 1k-4k tokens)
Z95 = 1.959964
# response_drift_threshold per task for the drift-triggered rows (longest interval 16, shortest 2), calibrated
# on the LLaDA proxy by `python -m eval.tiny.drift_profile` (eval/results/drift_profile.md, "batch mean" view:
# the trigger reads the batch's mean drift, and these rows run batches of 500 / 100): replayed on the profile,
# they refresh the response about every 4, 8 and 12 steps (8: the paper's Kr, placed by the drift; multihop's
# 32 steps allow 32 / k only). The earlier guesses, 0.02 and 0.1, were above every arith step's batch drift.
DRIFT_THRESHOLDS = {"arith": (0.00245, 0.00345, 0.00411), "hotpot": (0.0101, 0.0257, 0.0304)}
THRESHOLD = 0.9  # parallel decoding's confidence threshold for `run --threshold` (Fast-dLLM's value)


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def settings_for(family: str, arch: str, n_layers: int | None = None) -> list[tuple[str, object]]:
    """(name, CacheConfig or None) for one task: uncached, the paper's default, the official
    per-task setting, sweeps of Kr, transfer_ratio and Kp around the paper default, the library
    default and the refresh policies beyond the paper (per-layer budgets need the model's
    `n_layers`). Duplicates keep the first name."""
    from dllm_cache import CacheConfig
    from dllm_cache.engine.layer_budget import ramp_ratios

    paper = CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=0.25, selection="paper", cuda_graphs=False)
    rows: list[tuple[str, object]] = [("uncached", None), ("paper-default", paper)]
    if family == "arith":  # LLaDA-Instruct GSM8K in the dLLM-Cache scripts: Kp 50, Kr 7, ratio 0.25
        rows.append(("official", replace(paper, prompt_interval=50, response_interval=7)))
    else:  # HotpotQA: Kp 100, Kr 8, ratio 0.25 (= the paper default)
        rows.append(("official", paper))
    rows += [(f"Kr={kr}", replace(paper, response_interval=kr)) for kr in (1, 2, 4, 8, 16)]
    rows += [(f"ratio={r:g}", replace(paper, transfer_ratio=r)) for r in (0.0, 0.1, 0.25, 0.5, 1.0)]
    rows += [(f"Kp={kp}", replace(paper, prompt_interval=kp)) for kp in (10, 50, 100)]
    frontier = replace(paper, selection="frontier")
    rows += [
        ("default", replace(CacheConfig(), cuda_graphs=False)),
        ("frontier", frontier),
        ("frontier-only", replace(frontier, frontier_only=True)),
        ("frontier-only Kr=16", replace(frontier, frontier_only=True, response_interval=16)),
        ("frontier-only no-prompt-refresh", replace(frontier, frontier_only=True, prompt_interval=None)),
    ]
    # Drift-triggered response refresh: Kr=16 the longest interval, 2 the shortest, the task's calibrated
    # thresholds (DRIFT_THRESHOLDS); the variants at the middle one (~8 steps per refresh, as Kr=8);
    # per-layer budgets: deeper layers recompute more.
    drift = {t: replace(paper, response_drift_threshold=t, response_min_interval=2, response_interval=16)
             for t in DRIFT_THRESHOLDS[family]}
    rows += [(f"drift={t:g}", cfg) for t, cfg in drift.items()]
    mid = DRIFT_THRESHOLDS[family][1]
    rows.append((f"frontier-only drift={mid:g}", replace(drift[mid], selection="frontier", frontier_only=True)))
    if n_layers is not None:
        ramp = ramp_ratios(n_layers, paper.transfer_ratio, 0.5)
        rows += [("per-layer", replace(paper, layer_ratios=ramp)),
                 ("frontier per-layer", replace(frontier, layer_ratios=ramp)),
                 (f"per-layer drift={mid:g}", replace(drift[mid], layer_ratios=ramp))]
    if arch == "dream":  # the row whose logits predict the first response token: cached with the prompt or the response
        rows += [
            ("paper shifted-row=response", replace(paper, shifted_row="response")),
            ("frontier-only shifted-row=response", replace(frontier, frontier_only=True, shifted_row="response")),
        ]
    return rows


def threshold_settings(family: str, threshold: float) -> list[tuple[str, object]]:
    """(name, CacheConfig or None) under threshold decoding (every masked token whose confidence reaches
    `threshold` commits, several per step): uncached, the library default, the paper default, and the
    default adapted to parallel decoding, by a shorter response interval (Kr 2) or by the token clock
    (`response_clock="tokens"`: refresh once the rows committed Kr tokens); block-dual, Fast-dLLM's
    pairing. Each name ends in " thr=<threshold>", and the rows are paired with their own uncached one."""
    from dllm_cache import CacheConfig

    paper = CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=0.25, selection="paper", cuda_graphs=False)
    default = replace(CacheConfig(), cuda_graphs=False)
    rows = [("uncached", None), ("default", default), ("paper-default", paper),
            ("default Kr=2", replace(default, response_interval=2)),
            ("default tokens-clock", replace(default, response_clock="tokens")),
            ("block-dual", replace(default, policy="block-dual"))]
    return [(f"{name} thr={threshold:g}", cfg) for name, cfg in rows]


class ForwardCounter:
    """Counts the model's forward calls inside a `with` block: an uncached step is one forward, so under
    threshold decoding (fewer steps than scheduled) this is the steps a batch ran."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def _count(self, *_) -> None:
        self.n += 1

    def __enter__(self) -> ForwardCounter:
        self.hook = self.model.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()


def realized_flops(model, lengths, settings: dict, config, stats: dict) -> float:
    """mean_flops of a setting whose steps follow the data (a drift-triggered refresh, threshold decoding): the
    steps of each kind cache_stats counted per generation (every row of a batch shares them), at each prompt
    length. Block policies: their steps differ by block, and the stats do not say which block each ran in, so
    the steps run are spread evenly over the blocks (linear in the steps past each block's first)."""
    from dllm_cache.analysis import flops

    dims = flops.ModelDims.from_config(model.config)
    block = sampler_settings(model, settings).get("block_length")
    per_gen = max(1, stats["generations"])
    R = settings["gen_length"]
    if config.is_block:
        n_blocks, ran = R // (block or R), stats["steps"] / per_gen

        def cost(P: int, per_block: int) -> int:
            return flops.generation_cost(dims, 1, P, R, n_blocks * per_block, config, block,
                                         steps_per_block=[per_block] * n_blocks).flops

        def one(P: int) -> float:  # the blocks' first steps, then each further step at the mean extra-step cost
            first = cost(P, 1)
            return first + (ran - n_blocks) * (cost(P, 2) - first) / n_blocks

        total = sum(n * one(P) for P, n in lengths.items())
    else:
        counts = {kind: stats[key] / per_gen for kind, key in (
            ("full", "full_steps"), ("response", "response_refresh_steps"), ("prompt", "prompt_refresh_steps"),
            ("partial", "partial_steps"))}
        total = sum(n * flops.generation_cost(dims, 1, P, R, settings["steps"], config, block, step_counts=counts).flops
                    for P, n in lengths.items())
    return total / max(1, sum(lengths.values()))


def row_flops(model, lengths, settings: dict, config, stats: dict | None, steps_run: float | None) -> float:
    """Mean FLOPs per generation of a row: analytic at batch 1 and each prompt's own length, over the scheduled
    steps; a drift- or threshold-run cached row counts the step kinds the cache ran (`realized_flops`), and an
    uncached row under a threshold the steps its batches ran (`steps_run`, forwards per batch)."""
    threshold = settings.get("threshold") is not None
    if config is None:
        return mean_flops(model, lengths, settings, None) * (steps_run / settings["steps"] if threshold else 1.0)
    if threshold or config.drift_triggered:
        return realized_flops(model, lengths, settings, config, stats)
    return mean_flops(model, lengths, settings, config)


def recost(path: Path, model_dir: str) -> int:
    """Recompute, with today's cost model, the analytic FLOPs of the rows of a frontier file whose steps followed
    the data (threshold decoding, a drift-triggered refresh), from the cache_stats and steps they recorded, and
    each row's flops_vs_uncached against the uncached row of its decoding. Why: a fix to how such rows are
    costed (block policies under a threshold were costed at every scheduled step) needs no GPU re-run. The
    model folder gives the shape and the tokenizer (the prompt lengths); returns the rows changed."""
    from dllm_cache import CacheConfig

    report = read_json(path)
    model, tok = load_model(model_dir, "cpu", torch.float32)
    changed, lengths = 0, {}
    for r in report["rows"]:
        cfg = r.get("config")
        if not cfg or not (r.get("threshold") is not None or cfg.get("response_drift_threshold")):
            continue
        key = (r["task"], r["n"])
        if key not in lengths:
            if r["task"] == "kv-retrieval":
                from eval.long_context import task as kv

                lengths[key] = token_lengths(tok, [kv.prompt_of(e) for e in kv.test_examples(r["n"])])
            else:
                family = next(f for f, t in TASK_NAMES.items() if t == r["task"])
                lengths[key] = prompt_lengths(tok, family, tasks.test_examples(family, r["n"]))
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in CacheConfig.__dataclass_fields__}
        flops = realized_flops(model, lengths[key], r["generation"], CacheConfig(**fields, cuda_graphs=False), r["cache_stats"])
        if not math.isclose(flops, r["flops"], rel_tol=1e-9):  # summation order alone is no change
            changed, r["flops"] = changed + 1, flops
    for r in report["rows"]:
        base = next(u for u in report["rows"] if u["task"] == r["task"] and u["config"] is None
                    and u.get("threshold") == r.get("threshold"))
        r["flops_vs_uncached"] = r["flops"] / base["flops"]
    write_json(path, report)
    return changed


def _config_fields(cfg) -> dict | None:
    if cfg is None:
        return None
    return {k: v for k, v in asdict(cfg).items() if k not in ("cuda_graphs", "compile")}


def run(model, tok, *, name: str, n: int, device: str, families=("arith", "hotpot"), only: list[str] | None = None,
        batch: dict | None = None, gen: dict | None = None, progress: bool = True, part: tuple[int, int] | None = None,
        threshold: float | None = None) -> dict:
    """Every setting on every family -> report dict with one row per (setting, family).

    `gen` overrides a family's generation settings (tests use short generations on CPU); `part`
    (i, k) runs every k-th setting from the i-th (1-based), plus uncached, so k GPUs share a task;
    `threshold` also runs `threshold_settings` under threshold decoding, against their own uncached row."""
    from dllm_cache import cache_enabled, cache_stats
    from dllm_cache.hooks import adapter_for, family_of

    arch = family_of(model)
    batch = {**BATCH, **(batch or {})}
    rows = []
    for family in families:
        examples = tasks.test_examples(family, n)
        settings = {**GEN_SETTINGS[family], **(gen or {}).get(family, {})}
        lengths = prompt_lengths(tok, family, examples)
        # warm-up: CUDA context, kernels and allocator, so the first timed row pays none of it
        accuracy_of(model, tok, family, examples[:2], device=device, settings=settings, batch_size=2)
        mean_prompt = sum(P * k for P, k in lengths.items()) / max(1, sum(lengths.values()))
        decodings = [(None, settings_for(family, arch, len(adapter_for(model).blocks(model))))]
        if threshold is not None:
            decodings.append((threshold, threshold_settings(family, threshold)))
        for thr, todo in decodings:
            base_texts: list[str] | None = None
            base_ok: list[int] = []
            base_seconds = base_name = None
            decoding = settings if thr is None else {**settings, "threshold": thr}
            done: dict = {}
            if only:  # a decoding runs its uncached row and the named ones; none named: it does not run
                todo = [(s, c) for s, c in todo if s in only or c is None]
                if len(todo) == 1 and todo[0][0] not in only:
                    continue
            if part:
                i, k = part
                todo = [todo[0]] + [sc for j, sc in enumerate(todo[1:]) if j % k == i - 1]
            for setting, cfg in tqdm(todo, desc=f"{name}/{TASK_NAMES[family]}", disable=not progress):
                if cfg is not None and cfg in done:  # same configuration under another name
                    rows.append({**done[cfg], "name": setting})
                    continue
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                stats = None
                # uncached: count the forwards (= steps run; fewer than scheduled under a threshold)
                with cache_enabled(model, cfg) if cfg is not None else ForwardCounter(model) as calls:
                    acc, texts = accuracy_of(model, tok, family, examples, device=device, settings=decoding,
                                             batch_size=batch[family])
                    if cfg is not None:
                        stats = cache_stats(model)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                ok = correct_indices(tasks.is_correct(family, t, ex["answer"]) for t, ex in zip(texts, examples))
                if cfg is None:
                    base_texts, base_seconds, base_ok, base_name = texts, seconds, ok, setting
                rows.append(_row(model, name, family, setting, cfg, thr, decoding, examples, texts, ok, base_texts,
                                 base_ok, base_name, seconds, base_seconds, stats, lengths, mean_prompt, batch[family],
                                 calls.n / math.ceil(len(examples) / batch[family]) if cfg is None else None))
                if cfg is not None:
                    done[cfg] = {k: v for k, v in rows[-1].items() if k != "name"}
        for thr in {r.get("threshold") for r in rows if r["task"] == TASK_NAMES[family]}:
            uncached = next(r for r in rows if r["task"] == TASK_NAMES[family] and r["config"] is None
                            and r.get("threshold") == thr)
            for r in rows:
                if r["task"] == TASK_NAMES[family] and r.get("threshold") == thr:
                    r["flops_vs_uncached"] = r["flops"] / uncached["flops"]
    return {"model": name, "arch": arch, "n": n, "rows": rows}


def _row(model, name: str, family: str, setting: str, cfg, thr, settings: dict, examples: list[dict], texts: list[str],
         ok: list[int], base_texts, base_ok: list[int], base_name, seconds: float, base_seconds, stats, lengths,
         mean_prompt: float, batch_size: int, steps_run: float | None) -> dict:
    """One frontier row (FLOPs: `row_flops`)."""
    flops = row_flops(model, lengths, settings, cfg, stats, steps_run)
    keys = [tasks.answer_key(family, t) for t in texts]
    correct = len(ok)
    return {
        "name": setting,
        "model": name,
        "task": TASK_NAMES[family],
        "config": _config_fields(cfg),
        "threshold": thr,
        "n": len(examples),
        "correct": correct,
        "accuracy": correct / len(examples),
        "ci95": list(wilson_interval(correct, len(examples))),
        "agreement_with_uncached": None if base_texts is None else
        sum(a == tasks.answer_key(family, b) for a, b in zip(keys, base_texts)) / len(texts),
        # exact McNemar against uncached on the same problems (dllm_cache/analysis/paired.py)
        "paired": None if cfg is None else paired_object(ok, base_ok, len(examples), against=base_name),
        "correct_ids": ok,  # indices of the problems answered right: what later pairings need
        "mean_prompt_tokens": mean_prompt,
        "flops": flops,
        "gpu_seconds": seconds / len(examples),
        "speedup": None if base_seconds is None else base_seconds / seconds,
        "recompute_fraction": None if stats is None else stats.get("recompute_fraction"),
        "cache_stats": stats,
        "batch_size": batch_size,
        "generation": settings,
        "samples": [{"generated": t, "answer": ex["answer"]} for t, ex in zip(texts[:2], examples[:2])],
        "steps_run": steps_run,
    }


def parse_part(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3): the second of three shares of the settings."""
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--part: expected I/K with integers, e.g. 2/3; got {text!r}") from None
    if not 1 <= i <= k:
        raise SystemExit(f"--part {text}: need 1 <= I <= K")
    return i, k


def read_json(path: Path) -> dict:
    """A frontier file, .json or gzipped .json.gz (the committed per-model files are gzipped: they hold
    every row's sample outputs)."""
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def write_json(path: Path, data: dict) -> None:
    """`data` at `path`, gzipped when the name ends in .gz (mtime 0: the same rows give the same bytes)."""
    text = json.dumps(data, indent=1, default=str)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)


def model_file(out_dir: Path, name: str) -> Path:
    """The model's frontier_<name>.json.gz when there is one (a run adds to it), else frontier_<name>.json."""
    gz = out_dir / f"frontier_{name}.json.gz"
    return gz if gz.exists() else out_dir / f"frontier_{name}.json"


def merge_into(path: Path, report: dict) -> dict:
    """`report` plus the rows of an earlier run of the same model at `path` that it did not redo
    (same task and setting name), so tasks, or parts of a task's settings (`--only`), can run as
    separate commands, each within a device call's limit or on its own GPU; every row names its
    command."""
    if not path.exists():
        return report
    old = read_json(path)
    if old.get("model") != report["model"]:
        raise SystemExit(f"{path} holds model {old.get('model')!r}, not {report['model']!r}")
    redone = {(r["task"], r["name"]) for r in report["rows"]}
    # a kept row keeps the machine it ran on (the merged file's top-level "gpu" is the newest run's)
    kept = [{"gpu": old.get("gpu") or old.get("device"), **r} for r in old["rows"] if (r["task"], r["name"]) not in redone]
    return {**report, "rows": in_setting_order(kept + report["rows"], report.get("arch", "llada"))}


def in_setting_order(rows: list[dict], arch: str) -> list[dict]:
    """Rows by task, then in `settings_for` order (uncached first), whatever order the parts came in;
    names no longer in the settings keep their place after the known ones."""
    tasks_seen = list(dict.fromkeys(r["task"] for r in rows))
    rank = {}
    for family, task in TASK_NAMES.items():
        names = [name for name, _ in settings_for(family, arch, n_layers=2) + threshold_settings(family, THRESHOLD)]
        rank[task] = {name: i for i, name in enumerate(names)}
    return sorted(rows, key=lambda r: (tasks_seen.index(r["task"]), rank.get(r["task"], {}).get(r["name"], 1 << 30)))


def commands_of(report: dict) -> list[str]:
    """The commands that produced a frontier_<name>.json's rows, in order, once each."""
    return list(dict.fromkeys(row.get("command", report["command"]) for row in report["rows"]))


# ----------------------------------------------------------------------------- report
SUMMARY_KEYS = ("name", "threshold", "accuracy", "ci95", "paired", "flops", "gpu_seconds", "speedup", "flops_vs_uncached",
                "agreement_with_uncached", "recompute_fraction", "config", "device", "measured_as")


def default_config_fields() -> dict:
    """The fields of what `CacheConfig()` does now, as the rows store them (CUDA graphs off)."""
    from dllm_cache import CacheConfig

    return json.loads(json.dumps(_config_fields(replace(CacheConfig(), cuda_graphs=False)), default=str))


def with_current_default(rows: list[dict]) -> list[dict]:
    """The "default" row is the measured row whose configuration is what `CacheConfig()` does now
    (under whatever name it ran), so the summary follows a change of default without a re-run and
    never shows a default measured under an older one. Fields a row predates count as their default."""
    want = default_config_fields()

    def current(r: dict) -> bool:  # a threshold-decoded row is another decoding: never the default row
        return bool(r.get("config")) and r.get("threshold") is None and all(r["config"].get(k, v) == v for k, v in want.items())

    # a row of the current config under another name first; else a row run as "default" that still is it
    match = next((r for r in rows if r["name"] != "default" and current(r)), None)
    match = match or next((r for r in rows if r["name"] == "default" and current(r)), None)
    if match is None:
        return [r for r in rows if r["name"] != "default"]
    default = {**match, "name": "default"}
    if match["name"] != "default":
        default["measured_as"] = match["name"]
    at = next((i for i, r in enumerate(rows) if r["name"] == "default"), None)
    rest = [r for r in rows if r["name"] != "default"]
    rest.insert(len(rest) if at is None else at, default)
    return rest


def report_order(report: dict) -> tuple:
    """LLaDA before Dream, each shipped proxy before its grown one ("llada" < "llada-large"),
    whatever order the files were found in."""
    arch = report.get("arch", "llada")
    return (0 if arch == "llada" else 1, arch, report["model"])


def with_paired(rows: list[dict]) -> list[dict]:
    """Rows with their "paired" object. Rows of runs that kept per-problem correctness have it (exact);
    for older rows `paired_bounds` gives the range of the exact p their agreement with uncached and
    correct counts allow (uncached rows, and rows with neither, get None)."""
    uncached = {r.get("threshold"): r for r in rows if r.get("config") is None}
    out = []
    for r in rows:
        base = uncached.get(r.get("threshold"))
        if r.get("paired") is None and r.get("config") is not None and base is not None \
                and r.get("agreement_with_uncached") is not None:
            n = r["n"]
            r = {**r, "paired": paired_bounds(n, round(r["accuracy"] * n), round(base["accuracy"] * n),
                                              r["agreement_with_uncached"], against=base["name"])}
        out.append(r)
    return out


_PROMPT_TOKENS: dict[str, float] = {}


def mean_prompt_tokens(task: str, n: int, rows: list[dict]) -> float | None:
    """Mean prompt length (tokens of the proxies' tokenizer) of a task's held-out problems: the rows'
    own record when they have one, else computed from eval/data (arith, multihop) on the CPU."""
    recorded = next((r["mean_prompt_tokens"] for r in rows if r.get("mean_prompt_tokens") is not None), None)
    if recorded is not None:
        return recorded
    family = next((f for f, t in TASK_NAMES.items() if t == task), None)
    if family is None:
        return None
    key = f"{family}/{n}"
    if key not in _PROMPT_TOKENS:
        from eval.tiny.tokenizer import load_or_build

        tok = load_or_build(Path(tasks.__file__).resolve().parent / "model")  # the proxies' one tokenizer
        lengths = prompt_lengths(tok, family, tasks.test_examples(family, n))
        _PROMPT_TOKENS[key] = sum(P * k for P, k in lengths.items()) / max(1, sum(lengths.values()))
    return _PROMPT_TOKENS[key]


def summarise(reports: list[dict]) -> dict:
    """frontier.json: {model: {task: {"n", "device", "settings": [...]}}}; "default" is
    `with_current_default`'s."""
    out: dict = {}
    task_order = list(TASK_NAMES.values())
    for rep in sorted(reports, key=report_order):
        tasks = dict.fromkeys(r["task"] for r in rep["rows"])
        for task in sorted(tasks, key=lambda t: task_order.index(t) if t in task_order else len(task_order)):
            rows = [dict(r, device=r.get("gpu") or rep.get("gpu") or rep.get("device")) for r in rep["rows"] if r["task"] == task]
            rows = with_paired(with_current_default(rows))
            out.setdefault(rep["model"], {})[task] = {
                "n": rows[0]["n"],
                "mean_prompt_tokens": mean_prompt_tokens(task, rows[0]["n"], rows),
                "device": " + ".join(dict.fromkeys(str(r["device"]) for r in rows)),  # rows merged from several runs
                "generation": rows[0]["generation"],
                "batch_size": rows[0]["batch_size"],
                "settings": [{k: r.get(k) for k in SUMMARY_KEYS} for r in rows],
            }
            if rep.get("note"):  # what a reader must know before reading the rows (e.g. a task the model did not learn)
                out[rep["model"]][task]["note"] = rep["note"]
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _paired_cells(paired: dict | None) -> str:
    """"b / c | p": the exact McNemar test, or for rows without per-problem data the answers that
    differ and the range of p they allow."""
    if paired is None:
        return "- | -"
    if paired.get("exact"):
        return f"{paired['cached_right_uncached_wrong']} / {paired['cached_wrong_uncached_right']} | {paired['p_value']:.3g}"
    return f"<= {paired['answers_differ']} differ | {paired['p_value_min']:.2g}-{paired['p_value_max']:.2g}"


def markdown(summary: dict, commands: list[str]) -> str:
    lines = []
    for model, per_task in summary.items():
        for task, entry in per_task.items():
            gen = entry["generation"]
            tokens = entry.get("mean_prompt_tokens")
            blocks = f"block {gen['block_length']}" if gen.get("block_length") else "no blocks"  # Dream: none
            lines += [f"### {model} / {task} (n = {entry['n']}, {entry['device']}; gen {gen['gen_length']}, "
                      f"steps {gen['steps']}, {blocks}, batch {entry['batch_size']}"
                      + ("" if tokens is None else f"; mean prompt {tokens:.0f} tokens") + ")", "",
                      *([f"> {entry['note']}", ""] if entry.get("note") else []),
                      "| setting | Kp | Kr | ratio | selection | accuracy % | 95% CI | agree % | TFLOPs/gen | FLOPs vs uncached "
                      "| GPU ms/gen | speedup | right only cached / only uncached | McNemar p |",
                      "|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
            for s in entry["settings"]:
                c = s["config"] or {}
                sel = c.get("selection", "-")
                if c.get("frontier_only"):
                    sel += " (only)"
                if c.get("shifted_row") == "response":
                    sel += ", shifted row fresh"
                if c.get("policy", "feature") != "feature":
                    sel = c["policy"]
                if s.get("threshold") is not None:
                    sel += f", threshold {s['threshold']}"
                lo, hi = s["ci95"]
                speed = "-" if s["speedup"] is None else f"{s['speedup']:.2f}x"
                name = s["name"] + (f" (= {s['measured_as']})" if s.get("measured_as") else "")
                lines.append(
                    f"| {name} | {c.get('prompt_interval', '-')} | {c.get('response_interval', '-')} | "
                    f"{c.get('transfer_ratio', '-')} | {sel} | {_pct(s['accuracy'])} | {_pct(lo)}-{_pct(hi)} | "
                    f"{_pct(s['agreement_with_uncached'])} | {s['flops'] / 1e12:.3f} | {s['flops_vs_uncached']:.3f} | "
                    f"{1e3 * s['gpu_seconds']:.2f} | {speed} | {_paired_cells(s.get('paired'))} |"
                )
            lines.append("")
    lines += ["Commands:", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # an entry with a note (e.g. a task the model did not learn) is for the table only: its points would
    # read as quality
    summary = {m: {t: e for t, e in per.items() if not e.get("note")} for m, per in summary.items()}
    summary = {m: per for m, per in summary.items() if per}
    models = list(summary)
    task_names = list(dict.fromkeys(t for per in summary.values() for t in per))
    # one row per model, one column per task: eight panels side by side were unreadable
    fig, axes = plt.subplots(len(models), len(task_names), figsize=(7 * len(task_names), 4.6 * len(models)),
                             squeeze=False)
    for (row, model), (col, task) in ((m, t) for m in enumerate(models) for t in enumerate(task_names)):
        ax = axes[row][col]
        if task not in summary[model]:
            ax.set_axis_off()
            continue
        entry = summary[model][task]
        for s in entry["settings"]:
            if s["speedup"] is None:
                continue
            sel = (s["config"] or {}).get("selection", "paper")
            color = "tab:green" if s["name"] == "default" else ("tab:orange" if sel == "frontier" else "tab:blue")
            lo, hi = s["ci95"]
            # max(0, ...): at 0% or 100% the Wilson bound equals the estimate up to float rounding
            err = [[100 * max(0.0, s["accuracy"] - lo)], [100 * max(0.0, hi - s["accuracy"])]]
            ax.errorbar(s["speedup"], 100 * s["accuracy"], yerr=err,
                        fmt="o", color=color, ms=4, capsize=2, alpha=0.85)
            ax.annotate(s["name"], (s["speedup"], 100 * s["accuracy"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        base = next(s for s in entry["settings"] if s["name"] == "uncached")
        ax.axhline(100 * base["accuracy"], color="k", ls="--", lw=0.8, label="uncached")
        ax.axhspan(100 * base["ci95"][0], 100 * base["ci95"][1], color="k", alpha=0.06)
        ax.set(title=f"{model} / {task} (n={entry['n']})", xlabel="measured speedup over uncached (GPU, eager)",
               ylabel="accuracy %")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=lab) for c, lab in
               (("tab:blue", "paper policy"), ("tab:orange", "frontier selection"), ("tab:green", "default"))]
    axes[0][0].legend(handles=handles, fontsize=7, loc="lower left")
    devices = sorted({str(entry["device"]) for per in summary.values() for entry in per.values()})
    fig.suptitle(f"dllm-cache on the proxy models: accuracy vs speedup ({', '.join(devices)})")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every setting on one model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--model", required=True, help="exported proxy model folder (config, weights, tokenizer)")
    r.add_argument("--name", required=True, help="model key in the reports, e.g. llada or dream")
    r.add_argument("--n", type=int, default=tasks.N_TEST, help="held-out examples per task")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    r.add_argument("--families", default="arith,hotpot")
    r.add_argument("--only", default=None, help="comma-separated setting names (uncached always runs)")
    r.add_argument("--part", default=None, metavar="I/K",
                   help="run the I-th of K interleaved shares of the settings (plus uncached), e.g. one per GPU")
    r.add_argument("--threshold", type=float, nargs="?", const=THRESHOLD, default=None,
                   help=f"also run the threshold-decoding rows (`threshold_settings`) at this confidence (bare: {THRESHOLD})")
    r.add_argument("--arith-batch", type=int, default=BATCH["arith"])
    r.add_argument("--hotpot-batch", type=int, default=BATCH["hotpot"])
    for fam in ("arith", "hotpot"):
        g = GEN_SETTINGS[fam]
        r.add_argument(f"--{fam}-gen", default=None, metavar="L,S,B",
                       help=f"{fam} gen_length,steps,block_length (default {g['gen_length']},{g['steps']},{g['block_length']})")
    r.add_argument("--out-dir", type=Path, default=RESULTS)
    r.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="merge frontier_<name>.json files into frontier.json/.md/.png",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rep.add_argument("--out-dir", type=Path, default=RESULTS)
    rep.add_argument("--inputs", nargs="*", default=None, help="default: <out-dir>/frontier_*.json and frontier_*.json.gz")
    rc = sub.add_parser("recost", help="recompute the FLOPs of data-dependent rows (threshold, drift) from their stats")
    rc.add_argument("--model", required=True, help="a model folder of the file's shape (config and tokenizer)")
    rc.add_argument("files", nargs="+", type=Path)
    mer = sub.add_parser("merge", help="merge frontier_<name>.json files of one model (e.g. --part runs) into one")
    mer.add_argument("--into", type=Path, required=True, help="the model's frontier_<name>.json (created if missing)")
    mer.add_argument("parts", nargs="+", type=Path)
    args = p.parse_args(argv)

    if args.cmd == "recost":
        for path in args.files:
            print(f"[frontier] {path}: {recost(path, args.model)} row(s) recosted")
        return 0
    if args.cmd == "merge":
        for part in args.parts:
            merged = merge_into(args.into, read_json(part))
            args.into.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.into, merged)
        print(f"[frontier] merged {len(args.parts)} file(s) into {args.into}: {len(merged['rows'])} rows")
        return 0
    if args.cmd == "run":
        dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
        part = parse_part(args.part) if args.part else None  # a malformed --part stops before the model loads
        model, tok = load_model(args.model, args.device, dtype)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = model_file(args.out_dir, args.name)
        command = "PYTHONPATH=. python -m eval.frontier " + shlex.join(argv if argv is not None else sys.argv[1:])
        options = dict(name=args.name, n=args.n, device=args.device, only=args.only.split(",") if args.only else None,
                       part=part, threshold=args.threshold,
                       batch={"arith": args.arith_batch, "hotpot": args.hotpot_batch}, progress=not args.no_progress,
                       gen={f: parse_gen(v, f"{f}-gen")
                            for f, v in (("arith", args.arith_gen), ("hotpot", args.hotpot_gen)) if v})
        for family in args.families.split(","):  # one family at a time, each written when done
            t0 = time.time()
            report = run(model, tok, families=(family,), **options)
            gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
            for row in report["rows"]:
                row["command"], row["seconds"], row["gpu"] = command, round(time.time() - t0, 1), gpu or args.device
            report.update(model_path=args.model, device=args.device, dtype=str(dtype).removeprefix("torch."),
                          gpu=gpu,
                          torch=torch.__version__, command=command)
            report = merge_into(path, report)
            write_json(path, report)
        for row in report["rows"]:
            print(f"{row['task']:9s} {row['name']:38s} acc {100 * row['accuracy']:5.1f}% "
                  f"[{100 * row['ci95'][0]:.1f}, {100 * row['ci95'][1]:.1f}] flops x{row['flops_vs_uncached']:.3f} "
                  f"{1e3 * row['gpu_seconds']:7.2f} ms/gen speedup {row['speedup'] or 0:5.2f}")
        print(f"[frontier] wrote {path}")
        return 0

    inputs = [Path(x) for x in args.inputs] if args.inputs else sorted(
        [*args.out_dir.glob("frontier_*.json"), *args.out_dir.glob("frontier_*.json.gz")])
    reports = [read_json(x) for x in inputs]
    if not reports:
        raise SystemExit(f"no frontier_<name>.json in {args.out_dir}; run `python -m eval.frontier run ...` first")
    summary = summarise(reports)
    (args.out_dir / "frontier.json").write_text(json.dumps(summary, indent=1))
    commands = list(dict.fromkeys(c for r in reports for c in commands_of(r)))
    (args.out_dir / "frontier.md").write_text(markdown(summary, commands))
    plot(summary, args.out_dir / "frontier.png")
    print(markdown(summary, commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
