"""Speed / FLOPs comparison of cached vs uncached generation (`dllm-cache bench`).

For one model and one workload, for each batch size: time an uncached generation, then the
same prompts with each cache configuration, in the same process, and report latency,
tokens/s, speedup, analytic FLOPs (cross-checked once with FlopCounterMode), achieved
TFLOP/s, a roofline bound, token agreement with the uncached output and the cache's stats.
Each configuration is timed `--repeats` times (default 3): the table shows the median latency and
its spread (min-max). Writes `<tag>.json`, `<tag>.md` (bench/report.py) and `<tag>.png`
(bench/plot.py) to `--out-dir` (default ./dllm_cache_results, created in the current directory);
prints the table last. This module runs the bench and writes its outputs; the models and prompts come
from factory.py, the command line (parser, dry run, main) is cli.py.

Random-weight models (`--shape llada-8b|dream-7b`) are built directly on the device: compute
does not depend on weight values, so they time like the real checkpoints. Parallel decoding:
`--threshold` / `--factor` (on a trained `--model`), or `--trace FILE` to replay the step counts
a trained proxy model decoded with (eval/traces/run.py) on any shape: every run but the uncached
one-token-per-step baseline then uses it, beside an uncached run with the same decoding.
`--policy block-prefix block-dual` adds Fast-dLLM's block KV cache to the compared caches.

    PYTHONPATH=. python -m dllm_cache.bench --shape llada-8b --workload gsm8k \
        --batch-size 1 8 --transfer-ratio 0.25 --response-interval 8 --max-steps 33
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dllm_cache.analysis.flops import (
    STEP_KINDS,
    ModelDims,
    count_forward_flops,
    generation_cost,
    schedule_counts,
    step_flops,
)
from dllm_cache.bench import memory as bench_memory
from dllm_cache.bench.decoding import Decoding, apply_trace_lengths, load_decoding, run_kinds
from dllm_cache.bench.factory import DTYPES, WORKLOADS, Workload, _config_for, build_model, random_prompts
from dllm_cache.bench.peaks import learn_peaks
from dllm_cache.bench.plot import plot
from dllm_cache.bench.report import markdown_table
from dllm_cache.engine.patch import cache_memory, cache_stats, disable_cache, enable_cache, reset_cache
from dllm_cache.hooks import adapter_for
from dllm_cache.sampling.generate import generate

# --policy names -> CacheConfig fields: the feature cache's selections, and the block KV caches
POLICIES = {
    "paper": {"selection": "paper"},
    "frontier": {"selection": "frontier"},
    "frontier-only": {"selection": "frontier", "frontier_only": True},
    "block-prefix": {"policy": "block-prefix"},
    "block-dual": {"policy": "block-dual"},
    # a block start recomputes the last block and the new one, a full forward every Kp (100) steps only
    "block-prefix-incremental": {"policy": "block-prefix", "block_start": "incremental"},
    "block-dual-incremental": {"policy": "block-dual", "block_start": "incremental"},
}
BLOCK_POLICIES = ("block-prefix", "block-dual", "block-prefix-incremental", "block-dual-incremental")


@dataclass(frozen=True)
class CacheSetting:
    prompt_interval: int
    response_interval: int
    transfer_ratio: float
    compile: bool = False
    policy: str = "paper"
    kv_cache_dtype: str | None = None  # CacheConfig.kv_cache_dtype: None exact, "fp8" (lossy)

    @property
    def label(self) -> str:
        if self.policy in BLOCK_POLICIES:  # Kp, Kr and the ratio do not apply
            label = self.policy
        else:
            label = f"Kp={self.prompt_interval} Kr={self.response_interval} r={self.transfer_ratio:g}"
            if self.policy != "paper":
                label += f" {self.policy}"
        label += f" kv-{self.kv_cache_dtype}" if self.kv_cache_dtype else ""
        return label + " compiled" if self.compile else label

    def as_dict(self) -> dict[str, Any]:
        """The report's `cache` field; kv_cache_dtype only when set (exact runs' rows are as before)."""
        d = asdict(self)
        if d["kv_cache_dtype"] is None:
            del d["kv_cache_dtype"]
        return d

    def to_config(self) -> Any:
        from dllm_cache.config import CacheConfig

        if self.policy in BLOCK_POLICIES:
            return CacheConfig(compile=self.compile, kv_cache_dtype=self.kv_cache_dtype, **POLICIES[self.policy])
        return CacheConfig(
            prompt_interval=self.prompt_interval,
            response_interval=self.response_interval,
            transfer_ratio=self.transfer_ratio,
            compile=self.compile,
            kv_cache_dtype=self.kv_cache_dtype,
            **POLICIES[self.policy],
        )


@dataclass
class TimedRun:
    """One (possibly truncated) generation. Times in seconds."""

    state: torch.Tensor  # (batch, prompt + gen) ids: output, or x before step `n_steps`
    total_s: float  # from the call to the end (truncated: to the start of step n_steps)
    setup_s: float  # from the call to the start of step 0
    step_s: list[float]  # one per denoising step run (forward + sampler work)
    truncated: bool

    @property
    def n_steps(self) -> int:
        return len(self.step_s)


@dataclass
class Row:
    batch_size: int
    label: str
    cache: dict[str, Any] | None
    latency_s: float
    latencies_s: list[float]
    timed_steps: int
    extrapolated: bool
    tokens_per_s: float
    speedup: float | None
    flops: int
    flop_reduction: float | None
    achieved_tflops: float
    roofline_s: float | None
    measured_over_roofline: float | None
    agreement: float
    step_counts: dict[str, int]
    step_ms: dict[str, float | None]
    roofline_step_ms: dict[str, float] | None
    cache_stats: dict[str, Any] | None = None
    recomputed_fraction: float | None = None
    peak_mem_gb: float | None = None  # whole-process peak (torch allocator), CUDA only
    estimated_peak_gb: float | None = None  # the same from the shapes (dllm_cache.analysis.memory)
    cache_bytes: dict[str, int] | None = None  # what the cache held after the run, by kind
    decoding: str = "fixed"  # the unmasking rule: fixed schedule, threshold, factor or a replayed trace
    notes: list[str] = field(default_factory=list)


class _Truncate(Exception):
    """Raised from the forward pre-hook to stop a generation after `max_steps` steps."""


class _Clock:
    """Timestamps that are correct on CUDA (events) and CPU (perf_counter)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Durations between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def timed_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    workload: Workload,
    device: torch.device,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
    decoding: Decoding | None = None,
) -> TimedRun:
    """Run `generate`, timing every denoising step (one model forward + its sampler work).

    Steps are delimited by a forward pre-hook on `model`; with `max_steps`, the hook stops
    the generation at the start of step `max_steps` and keeps the ids it was called with.
    `decoding`: the unmasking rule (default the fixed schedule).
    """
    sampler = (decoding or Decoding()).sampler_kwargs(input_ids.shape[0], workload.gen_len, workload.block_length)
    clock = _Clock(device)
    calls = 0
    captured: list[torch.Tensor] = []

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        nonlocal calls
        clock.mark()
        if max_steps is not None and calls >= max_steps:
            ids = args[0] if args else kwargs.get("input_ids")
            captured.append(ids.detach().clone())
            raise _Truncate
        calls += 1

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    truncated = False
    # Dream's sampler decodes one window unless the workload gives it blocks (--dream-block-length)
    options = dict(gen_length=workload.gen_len, steps=workload.steps, block_length=workload.block_length,
                   temperature=0.0, progress=progress)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    clock.mark()
    try:
        with torch.no_grad():
            out = generate(model, input_ids, **options, **sampler)
        clock.mark()
    except _Truncate:
        truncated = True
        out = captured[0]
    finally:
        handle.remove()
    durations = clock.seconds()
    # marks: [call, step0, step1, ..., end]; durations[0] = setup, the rest = steps
    return TimedRun(
        state=out,
        total_s=sum(durations),
        setup_s=durations[0] if durations else 0.0,
        step_s=durations[1:],
        truncated=truncated,
    )


def per_kind_ms(run: TimedRun, kinds: list[str]) -> dict[str, float | None]:
    """Mean measured time of each step kind (ms), None if the kind was not run. `kinds`: the
    generation's step kinds in order (bench/decoding.py's run_kinds)."""
    by_kind: dict[str, list[float]] = {k: [] for k in STEP_KINDS}
    for kind, seconds in zip(kinds, run.step_s):
        by_kind[kind].append(seconds)
    return {k: (1e3 * statistics.fmean(v) if v else None) for k, v in by_kind.items()}


def estimate_latency(run: TimedRun, kinds: list[str]) -> float:
    """Whole-generation latency: measured, or extrapolated from a truncated run.

    The schedule is periodic, so the cost is linear in steps: setup + sum over the full
    schedule (`kinds`, every step's kind) of the mean measured time of each step's kind.
    """
    if not run.truncated:
        return run.total_s
    means = per_kind_ms(run, kinds)
    # A kind missing from the window: a prompt refresh costs about a full step; else the mean.
    fallback = {k: 1e3 * statistics.fmean(run.step_s) for k in STEP_KINDS}
    if means["full"] is not None:
        fallback["prompt"] = means["full"]
    total_ms = sum(means[k] if means[k] is not None else fallback[k] for k in kinds)
    return run.setup_s + total_ms / 1e3


def agreement(a: torch.Tensor, b: torch.Tensor, prompt_len: int, mask_id: int | None) -> float:
    """Fraction of generated positions where `a` and `b` hold the same token.

    Positions still masked in both (truncated runs) are left out.
    """
    ga, gb = a[:, prompt_len:], b[:, prompt_len:]
    decided = torch.ones_like(ga, dtype=torch.bool)
    if mask_id is not None:
        decided = (ga != mask_id) | (gb != mask_id)
    n = int(decided.sum())
    if n == 0:
        return 1.0
    return float((ga == gb)[decided].float().mean())


# ----------------------------------------------------------------------------- the bench


def _settings(args: argparse.Namespace) -> list[CacheSetting]:
    """Cache configurations to run: the full product, or one axis at a time ("axes")."""
    ratios, krs, kps = args.transfer_ratio, args.response_interval, args.prompt_interval
    if args.grid == "product":
        combos = [(kp, kr, r) for kp in kps for kr in krs for r in ratios]
    else:
        r0, kr0, kp0 = _reference(ratios, 0.25), _reference(krs, 8), _reference(kps, 100)
        combos = [(kp0, kr0, r) for r in ratios]
        combos += [(kp0, kr, r0) for kr in krs if kr != kr0]
        combos += [(kp, kr0, r0) for kp in kps if kp != kp0]
    compiles = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    seen: list[CacheSetting] = []
    reference = (_reference(kps, 100), _reference(krs, 8), _reference(ratios, 0.25))
    for kp, kr, r in combos:
        for compiled in compiles:
            for policy in args.policy:
                # block policies have no Kp / Kr / ratio to sweep: one run per policy (own names: the
                # combo's kp, kr, r must survive for the next compile flag)
                pkp, pkr, pr = reference if policy in BLOCK_POLICIES else (kp, kr, r)
                setting = CacheSetting(pkp, pkr, pr, compiled, policy, args.kv_cache_dtype)
                if setting not in seen:
                    seen.append(setting)
    return seen


def _reference(values: list, default: Any) -> Any:
    """The value the other axes are held at in plots and "axes" grids."""
    return default if default in values else values[0]


def _workload(args: argparse.Namespace, config: Any | None = None, decoding: Decoding | None = None) -> Workload:
    """The run's lengths: --workload, overridden by explicit options; a Dream model's semi-AR block is
    --dream-block-length (default none: Dream's own sampler); a replayed trace fixes gen length and block."""
    base = dict(WORKLOADS[args.workload]) if args.workload else {}
    for key in ("prompt_len", "gen_len", "steps", "block_length"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if decoding is not None and decoding.trace_path is not None:  # the trace knows the generation length
        base.setdefault("gen_len", int(decoding.trace_meta["gen_length"]))
        base.setdefault("steps", base["gen_len"])
    missing = [k for k in ("prompt_len", "gen_len", "steps") if k not in base]
    if missing:
        raise SystemExit(
            f"workload incomplete, missing {missing}: pass --workload gsm8k|hotpotqa or all of "
            "--prompt-len --gen-len --steps"
        )
    workload = Workload(base["prompt_len"], base["gen_len"], base["steps"], base.get("block_length"))
    block_arg = args.block_length
    if config is not None and bench_memory.family_of_config(config) == "dream":
        workload = replace(workload, block_length=args.dream_block_length)
        block_arg = args.dream_block_length
    if decoding is not None:
        workload = apply_trace_lengths(workload, decoding, {"gen_len": args.gen_len, "block_length": block_arg,
                                                            "steps": args.steps})
    return workload


def _window(args: argparse.Namespace, settings: list[CacheSetting], steps: int) -> int | None:
    """Steps to time (None = all): at least one full Kr period after step 0."""
    if args.max_steps is None or args.max_steps >= steps:
        return None
    need = max(s.response_interval for s in settings) + 1 if settings else 1
    window = max(args.max_steps, need)
    if window != args.max_steps:
        print(
            f"[bench] --max-steps {args.max_steps} raised to {window} so the timed window holds "
            "step 0 and a full Kr period",
            file=sys.stderr,
        )
    return None if window >= steps else window


def _warmup_steps(args: argparse.Namespace, setting: CacheSetting | None, steps: int, whole: bool = False) -> int:
    """Untimed steps before each timed run: 2 Kr + 1, so every cached step kind has run twice
    (eagerly, which also compiles, then captured as a CUDA graph) and timed steps only replay.
    `whole`: runs whose step kinds follow blocks or a trace warm up over a whole generation."""
    if args.warmup_steps is not None:
        return min(args.warmup_steps, steps)
    if whole:
        return steps
    return min(steps, 2 if setting is None else 2 * setting.response_interval + 1)


def _windowed(decoding: Decoding, setting: CacheSetting | None) -> bool:
    """Whether a run may be timed on its first steps and extrapolated (--max-steps): only where the
    step kinds repeat with the step index (fixed schedule, feature cache or none)."""
    return decoding.fixed and (setting is None or setting.policy not in BLOCK_POLICIES)


def _drift_summary(traces: dict[str, Any]) -> dict[str, Any]:
    """cache_stats' per-step drift (per branch: step, since_refresh, drift lists) as a few numbers
    a report can hold: steps measured, mean and max drift."""
    out = {}
    for branch, t in traces.items():
        d = [float(x) for x in t.get("drift", [])]
        out[branch] = {"steps": len(d), "mean": sum(d) / len(d) if d else None, "max": max(d, default=None),
                       "dropped": t.get("dropped", 0)}
    return out


def _stats_dict(stats: Any) -> dict[str, Any]:
    """Flat, JSON-ready cache_stats: the drift trace summarised (it holds one entry per step)."""
    if hasattr(stats, "__dataclass_fields__"):
        stats = asdict(stats)
    stats = dict(stats)
    if isinstance(stats.get("drift"), dict):
        stats["drift"] = _drift_summary(stats["drift"])
    return {k: (v if isinstance(v, (int, float, str, bool, dict)) or v is None else str(v)) for k, v in stats.items()}


def _stats_delta(after: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """Counters accumulated between two `cache_stats` snapshots; ratios recomputed."""
    before = before or {}
    delta = {
        k: v - before.get(k, 0) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in after.items()
    }
    if "recompute_fraction" in delta and delta.get("tokens_total"):
        delta["recompute_fraction"] = delta["tokens_recomputed"] / delta["tokens_total"]
    return delta


def _timed_runs(
    model: torch.nn.Module,
    setting: CacheSetting | None,
    prompts: torch.Tensor,
    workload: Workload,
    device: torch.device,
    window: int | None,
    warmup: int,
    args: argparse.Namespace,
    decoding: Decoding | None = None,
) -> tuple[list[TimedRun], dict[str, Any] | None]:
    """Warm-up, then `args.repeats` timed runs of one configuration (None = uncached).

    The cache is reset before every run (the same prompts would otherwise look like the
    continuation of the previous generation) and disabled afterwards.
    """
    run_model = model
    if setting is not None:
        if setting.compile:
            torch._dynamo.reset()  # compile this layout from scratch: results independent of sweep order
        run_model = enable_cache(model, setting.to_config()) or model
    try:
        def once(max_steps: int | None) -> TimedRun:
            if setting is not None:
                reset_cache(run_model)
            return timed_generate(
                run_model, prompts, workload, device, max_steps, args.seed, args.step_progress, decoding
            )

        if warmup:
            once(warmup)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs, stats = [], None
        for _ in range(args.repeats):
            before = _stats_dict(cache_stats(run_model)) if setting is not None else None
            runs.append(once(window))
            if setting is not None:  # the model's stats accumulate: keep the last run's share
                stats = _stats_delta(_stats_dict(cache_stats(run_model)), before)
                stats["cache_bytes"] = cache_memory(run_model)
    finally:
        if setting is not None:
            disable_cache(run_model)
    return runs, stats


def run_bench(args: argparse.Namespace, on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (batch size, configuration); return the JSON-ready report.

    `on_row` receives the report of the rows measured so far after each row (meta "complete": False), so a
    run killed by a time limit (a GPU call's) still leaves what it measured."""
    from tqdm import tqdm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    decoding = load_decoding(args.threshold, args.factor, args.trace)
    workload = _workload(args, _config_for(args), decoding)
    settings = _settings(args)
    window = _window(args, [s for s in settings if _windowed(decoding, s)], workload.steps)
    on_gpu = device.type == "cuda"
    # this GPU's peaks (measured, from the table, or given): the roofline and the weight-read floor use them
    peaks = learn_peaks(device, args.peaks, args.peak_tbps, args.peak_tflops)
    peak_tflops, peak_tbps = peaks.tflops, peaks.tbps
    dtype_bytes = torch.finfo(dtype).bits // 8

    bench_memory.preflight(_config_for(args), args.batch_size, workload.prompt_len, workload.gen_len,
                           workload.block_length, dtype_bytes, device, args.kv_cache_dtype)
    t0 = time.perf_counter()
    model = build_model(args, device, dtype)
    build_s = time.perf_counter() - t0
    weights_gb = (torch.cuda.memory_allocated(device) if on_gpu else
                  sum(p.numel() * p.element_size() for p in model.parameters())) / 2**30
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    dims = ModelDims.from_config(config)
    mask_id = getattr(config, "mask_token_id", None)

    notes = []
    if window is not None:
        notes.append(
            f"timed the first {window} of {workload.steps} denoising steps per run (step 0 "
            "and at least one full Kr period); whole-generation latency = setup + sum over "
            "the full schedule of the mean measured time per step kind (full/response/"
            "partial): the schedule is periodic, so cost is linear in steps"
            + ("; runs with block policies or parallel decoding are timed whole" if
               any(not _windowed(decoding, s) for s in settings) or not decoding.fixed else "")
        )
    if not decoding.fixed:
        notes.append(
            f"decoding: {decoding.label} for every run but the uncached one-token-per-step baseline "
            "(speedups are over that baseline; agreement is with the uncached run of the same decoding); "
            "tokens/s count generated positions only"
        )
    if not on_gpu:
        notes.append("roofline skipped on CPU")
    else:
        notes.append(f"peaks: {peak_tbps:.3g} TB/s, {peak_tflops:.4g} TFLOP/s ({peaks.source}); weight-read floor "
                     f"{peaks.floor_ms(weight_bytes):.2f} ms per step (every parameter byte once at that bandwidth)")
    # The samplers ask a cached model for the rows they score only; it runs the LM head on those
    # (their response rows between prompt refreshes), unless the model has no separate head
    # module to patch (weight-tied LLaDA). An uncached model computes every row.
    adapter = adapter_for(model)
    head_all_rows = adapter.lm_head(model) is None
    logits_tokens = bench_memory.head_rows(adapter.family, workload.prompt_len, workload.gen_len,
                                           workload.block_length, head_all_rows)
    notes.append(
        "FLOPs: analytic (dllm_cache.analysis.flops), matmuls + attention, multiply-add = 2; LM head on "
        "all P + R rows uncached; cached, on "
        + ("all P + R rows on every step (no separate head module: weight tying)" if head_all_rows else
           f"the {logits_tokens['full']} rows the sampler scores on prompt refreshes and their "
           f"{logits_tokens['partial']} response rows otherwise")
    )
    notes.append(
        f"memory: weights {weights_gb:.3g} GiB; peak = whole-process torch allocator peak of the timed runs "
        "(CUDA only); est. = dllm_cache.analysis.memory estimate from the shapes; cache = bytes held after the run"
    )

    if args.kv_cache_dtype:
        notes.append(
            f"cached runs store K/V as {args.kv_cache_dtype} (CacheConfig.kv_cache_dtype; lossy, opt-in): about half "
            "the K/V bytes plus one layer's K/V in the model's dtype as the attention workspace (kv workspace)"
        )
    rows: list[Row] = []
    flop_checks: list[dict[str, Any]] = []

    def report(complete: bool) -> dict[str, Any]:
        """The JSON-ready report of the rows measured so far."""
        return {
            "meta": {
                "tag": args.tag,
                "model": args.model or args.shape,
                "family": str(getattr(config, "model_type", "")),
                "dims": dims.to_dict(),
                "dtype": str(dtype).replace("torch.", ""),
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if on_gpu else platform.processor()
                or platform.machine(),
                "torch": torch.__version__,
                "workload": {"name": args.workload, **asdict(workload)},
                "batch_sizes": list(args.batch_size),
                "timed_steps": window or workload.steps,
                "warmup_steps": args.warmup_steps if args.warmup_steps is not None else "2 uncached, 2 Kr + 1 cached",
                "decoding": decoding.describe(),
                "repeats": args.repeats,
                "peak_tflops": peak_tflops,
                "peak_tbps": peak_tbps,
                "peaks_source": peaks.source,
                "weight_bytes": weight_bytes,
                "weight_floor_ms": peaks.floor_ms(weight_bytes),
                "model_build_s": build_s,
                "weights_gb": weights_gb,
                "wall_s": time.perf_counter() - t0,
                "complete": complete,
                "reference": {
                    "transfer_ratio": _reference(args.transfer_ratio, 0.25),
                    "response_interval": _reference(args.response_interval, 8),
                    "prompt_interval": _reference(args.prompt_interval, 100),
                    "compile": args.compile != "off",
                },
                "notes": notes,
            },
            "flop_check": flop_checks,
            "results": [asdict(r) for r in rows],
        }

    fixed = Decoding()
    plan = [(None, fixed)] + ([] if decoding.fixed else [(None, decoding)]) + [(s, decoding) for s in settings]
    n_runs = len(args.batch_size) * len(plan)
    bar = tqdm(total=n_runs, desc="bench", file=sys.stderr, disable=args.no_progress)
    for batch in args.batch_size:
        prompts = random_prompts(config, batch, workload.prompt_len, args.seed).to(device)
        fill = mask_id if mask_id is not None else 0
        # FlopCounterMode cross-check on one uncached step (prompt + all-mask response).
        x0 = torch.cat(
            [prompts, torch.full((batch, workload.gen_len), fill, device=device)], dim=1
        )
        measured, output = count_forward_flops(model, x0)
        analytic = step_flops(dims, batch, workload.prompt_len, workload.gen_len, "full")
        finite = bool(torch.isfinite(output.logits).all())
        del output
        flop_checks.append({
            "batch_size": batch,
            "analytic_full_step": analytic,
            "flop_counter_full_step": measured,
            "relative_diff": (analytic - measured) / measured if measured else None,
            "logits_finite": finite,
        })
        if not finite:
            print(f"[bench] warning: non-finite logits at batch {batch}", file=sys.stderr)

        baseline: Row | None = None
        references: dict[str, torch.Tensor] = {}  # decoding label -> uncached output, for agreement
        for setting, dec in plan:
            cache_config = setting.to_config() if setting is not None else None
            label = setting.label if setting else "uncached"
            label += f" + {dec.label}" if dec.label else ""
            bar.set_postfix_str(f"b={batch} {label}")
            per_block = dec.steps_per_block(batch, workload.gen_len, workload.block_length)
            committed = dec.committed(batch, workload.gen_len, workload.block_length)
            kinds = run_kinds(cache_config, workload.prompt_len, workload.gen_len, workload.steps,
                              workload.block_length, per_block, dims.logit_shift, committed)
            windowed = _windowed(dec, setting)
            runs, stats = _timed_runs(
                model, setting, prompts, workload, device, window if windowed else None,
                _warmup_steps(args, setting, len(kinds), whole=not windowed), args, dec,
            )
            latencies = [estimate_latency(r, kinds) for r in runs]
            latency = statistics.median(latencies)
            run = runs[0]
            cost = generation_cost(
                dims, batch, workload.prompt_len, workload.gen_len, workload.steps,
                cache_config, workload.block_length,
                logits_tokens=logits_tokens if setting is not None else workload.prompt_len + workload.gen_len,
                dtype_bytes=dtype_bytes, peak_tflops=peak_tflops, peak_tbps=peak_tbps, steps_per_block=per_block,
                committed=committed,
            )
            estimate = bench_memory.run_peak(config, batch, workload.prompt_len, workload.gen_len,
                                             workload.block_length, dtype_bytes, setting is not None,
                                             deltas=cache_config is None or not cache_config.is_block,
                                             kv_cache_dtype=args.kv_cache_dtype)
            roof_step = None
            if peak_tflops and peak_tbps:
                roof_step = {
                    k: 1e3 * max(cost.flops_per_kind.get(k, 0) / (peak_tflops * 1e12),
                                 cost.bytes_per_kind.get(k, 0) / (peak_tbps * 1e12))
                    for k in STEP_KINDS
                }
            row = Row(
                batch_size=batch,
                label=label,
                cache=setting.as_dict() if setting else None,
                latency_s=latency,
                latencies_s=latencies,
                timed_steps=run.n_steps,
                extrapolated=run.truncated,
                tokens_per_s=batch * workload.gen_len / latency,
                speedup=None,
                flops=cost.flops,
                flop_reduction=None,
                achieved_tflops=cost.flops / latency / 1e12,
                roofline_s=cost.roofline_s,
                measured_over_roofline=(latency / cost.roofline_s) if cost.roofline_s else None,
                agreement=1.0,
                step_counts=cost.step_counts,
                step_ms=per_kind_ms(run, kinds),
                roofline_step_ms=roof_step,
                peak_mem_gb=(torch.cuda.max_memory_allocated(device) / 2**30) if on_gpu else None,
                estimated_peak_gb=estimate["total"] / 2**30,
                cache_bytes=stats.pop("cache_bytes", None) if stats else None,
                decoding=dec.label or "fixed",
            )
            if baseline is None:
                baseline = row
            row.speedup = baseline.latency_s / latency
            row.flop_reduction = baseline.flops / cost.flops
            if setting is None:
                references[dec.label] = run.state
            else:
                row.agreement = agreement(run.state, references[dec.label], workload.prompt_len, mask_id)
                row.cache_stats = stats
                if stats and stats.get("tokens_total"):
                    row.recomputed_fraction = stats["tokens_recomputed"] / stats["tokens_total"]
                expected = schedule_counts(run.n_steps, cache_config) if run.truncated else cost.step_counts
                names = {"full": "full_steps", "response": "response_refresh_steps", "prompt": "prompt_refresh_steps",
                         "partial": "partial_steps", "block": "block_steps"}
                got = {k: stats.get(names[k], 0) for k in expected} if stats else {}
                if got and got != expected:
                    row.notes.append(f"cache_stats step counts {got} != schedule {expected}")
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(report(complete=False))
    bar.close()
    return report(complete=True)


# ----------------------------------------------------------------------------- outputs


def write_outputs(report: dict[str, Any], out_dir: Path, tag: str, draw: bool = True) -> dict[str, Path]:
    """<tag>.json, .md and (with `draw`) .png in `out_dir`; a partial report (after each row) skips the plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{tag}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown_table(report))
    if draw:
        plot(report, paths["png"])
    else:
        del paths["png"]
    return paths
