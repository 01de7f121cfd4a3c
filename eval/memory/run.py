"""Peak memory of uncached vs cached generation in one process, per (model, workload, batch):
the rows of eval/results/memory.json, and a markdown table beside it.

    PYTHONPATH=. python -m eval.memory --shape llada-8b --runs hotpotqa:1,4,8,16 gsm8k:1,8,16 16000/32:1

A run is `WORKLOAD:BATCHES`, WORKLOAD a bench workload (gsm8k, hotpotqa) or PROMPT/GEN (steps =
block = GEN). Peaks are whole-process torch.cuda.max_memory_allocated (weights included) over the
run; the uncached model does the same work on every step, so a few steps give its peak, and the
cached run goes through 2 Kr + 2 steps so both cached step kinds have been captured as CUDA
graphs. On CPU there is no allocator peak: those fields are None (use it to test the script, do
not publish its rows). Rows merge into --out by (model, workload, batch, prompt_len, device,
kv_cache_dtype): `--kv-cache-dtype fp8` rows (CacheConfig(kv_cache_dtype="fp8"), lossy) sit beside
the exact ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import types
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dllm_cache import CacheConfig, cache_memory, disable_cache, enable_cache, reset_cache
from dllm_cache.bench.factory import DTYPES, SHAPES, WORKLOADS, Workload, build_model, random_prompts
from dllm_cache.bench.memory import run_peak
from dllm_cache.bench.report import human_bytes
from dllm_cache.bench.runner import timed_generate
from dllm_cache.engine.kv_store import KV_CACHE_DTYPES
from dllm_cache.sampling.options import position_limit

KEY = ("model", "workload", "batch", "prompt_len", "device", "kv_cache_dtype")  # rows before fp8 lack the last: None


def parse_run(spec: str) -> tuple[str, Workload, list[int]]:
    """'gsm8k:1,8' or '16000/32:1' -> (workload name, workload, batch sizes)."""
    try:
        name, batches = spec.split(":")
        sizes = [int(b) for b in batches.split(",")]
        if name in WORKLOADS:
            return name, Workload(**WORKLOADS[name]), sizes
        prompt, gen = (int(n) for n in name.split("/"))
        return f"prompt{prompt}-gen{gen}", Workload(prompt, gen, gen, gen), sizes
    except ValueError as err:
        raise SystemExit(
            f"--runs {spec!r}: expected WORKLOAD:B1,B2 with WORKLOAD one of {sorted(WORKLOADS)} or PROMPT/GEN "
            f"(e.g. hotpotqa:1,4 or 16000/32:1) ({err})"
        ) from None


def _measure(fn, device: torch.device) -> tuple[float | None, Any, str | None]:
    """(whole-process peak GiB over fn, its result, error) with the allocator's peak reset first."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = fn()
    except torch.OutOfMemoryError as err:
        return None, None, f"out of memory: {str(err).splitlines()[0]}"
    if device.type != "cuda":
        return None, result, None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30, result, None


def _generation(model, prompts: torch.Tensor, workload: Workload, device: torch.device, steps: int,
                config: CacheConfig | None) -> dict[str, int] | None:
    """`steps` denoising steps of a generation, cached with `config` (None: uncached); the bytes
    the cache held at the end, by kind."""
    if config is None:
        timed_generate(model, prompts, workload, device, steps)
        return None
    enable_cache(model, config)
    try:
        reset_cache(model)
        timed_generate(model, prompts, workload, device, steps)
        return cache_memory(model)
    finally:
        disable_cache(model)


def check_lengths(config, runs, max_length: int | None) -> None:
    """Refuse, before any work, a run longer than the model's position limit, unless --max-length
    lifts it (and then set it on the config, which every length check reads)."""
    if max_length:
        for key in ("max_sequence_length", "max_position_embeddings"):
            if hasattr(config, key):
                setattr(config, key, max_length)
    limit = position_limit(config)
    too_long = [(name, w.prompt_len + w.gen_len) for name, w, _ in runs if limit and w.prompt_len + w.gen_len > limit]
    if too_long:
        listed = ", ".join(f"{name} ({n} tokens)" for name, n in too_long)
        raise SystemExit(
            f"{listed} exceed the model's position limit of {limit} tokens; pass --max-length N to lift it for a "
            "memory measurement (RoPE has no position table, so memory and compute are those of the same shape; "
            "a real checkpoint's answers past its trained length are not meaningful)"
        )


def measure_rows(args: argparse.Namespace, on_row=None) -> list[dict[str, Any]]:
    """One row per (run, batch); `on_row(rows so far)` after each, so a later failure keeps them."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config = CacheConfig(args.prompt_interval, args.response_interval, args.transfer_ratio,
                         kv_cache_dtype=args.kv_cache_dtype)
    runs = [parse_run(s) for s in args.runs]
    model = build_model(types.SimpleNamespace(model=args.model, shape=args.shape, seed=0, init_std=0.02),
                        device, dtype)
    check_lengths(model.config, runs, args.max_length)
    weights_gb = (torch.cuda.memory_allocated(device) if device.type == "cuda"
                  else sum(p.numel() * p.element_size() for p in model.parameters())) / 2**30
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    dtype_bytes = torch.finfo(dtype).bits // 8
    rows = []
    for name, workload, batches in runs:
        for batch in batches:
            prompts = random_prompts(model.config, batch, workload.prompt_len, 0).to(device)
            steps = {"uncached": min(args.uncached_steps, workload.steps),
                     "cached": min(2 * config.response_interval + 2, workload.steps)}
            uncached, _, err_u = _measure(
                partial(_generation, model, prompts, workload, device, steps["uncached"], None), device)
            cached, held, err_c = _measure(
                partial(_generation, model, prompts, workload, device, steps["cached"], config), device)
            est = {c: run_peak(model.config, batch, workload.prompt_len, workload.gen_len, workload.block_length,
                               dtype_bytes, c, kv_cache_dtype=config.kv_cache_dtype)["total"] / 2**30
                   for c in (False, True)}
            row = {
                "model": args.model or args.shape, "workload": name, "batch": batch,
                "prompt_len": workload.prompt_len, "weights_gb": weights_gb,
                "uncached_peak_gb": uncached,
                "cached_peak_gb": cached,
                "device": device_name, "kv_cache_dtype": config.kv_cache_dtype,
                "gen_len": workload.gen_len, "dtype": str(dtype).replace("torch.", ""),
                "cache_config": {"prompt_interval": config.prompt_interval,
                                 "response_interval": config.response_interval,
                                 "transfer_ratio": config.transfer_ratio},
                "steps_run": steps,
                "cache_bytes": held,  # what the cache held at the end of the cached run, by kind
                "estimated_uncached_peak_gb": est[False],
                "estimated_cached_peak_gb": est[True],
                "torch": torch.__version__,
            }
            if err_u or err_c:
                row["error"] = "; ".join(f"{k}: {e}" for k, e in (("uncached", err_u), ("cached", err_c)) if e)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            kv = f" kv {config.kv_cache_dtype}" if config.kv_cache_dtype else ""
            print(f"[memory] {row['model']} {name}{kv} batch {batch}: peak uncached {uncached} GiB, cached {cached} GiB "
                  f"(weights {weights_gb:.3f} GiB){' ' + row['error'] if 'error' in row else ''}", flush=True)
    return rows


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `old` not measured again in `new`, then `new`; sorted by model, workload, batch."""
    fresh = {_key(r) for r in new}
    rows = [r for r in old if _key(r) not in fresh] + new
    return sorted(rows, key=lambda r: (r["model"], r["workload"], r["prompt_len"], r["batch"], r["device"],
                                       r.get("kv_cache_dtype") or ""))


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def _above(peak: float | None, weights: float) -> str:
    return "-" if peak is None else f"{peak - weights:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Peak memory above the weights, GiB (whole-process torch allocator peak minus weights), uncached vs "
        "cached in the same process; estimate from the shapes (dllm_cache.analysis.memory) in brackets. "
        "Command: `PYTHONPATH=. python -m eval.memory ...` (see eval/memory/run.py).",
        "",
        "| model | workload | batch | prompt | device | K/V | weights GiB | uncached (est.) | cached (est.) |"
        " cached / uncached | cache held |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = r["weights_gb"]
        u, c = r["uncached_peak_gb"], r["cached_peak_gb"]
        ratio = "-" if u is None or c is None or u - w <= 0 else f"{(c - w) / (u - w):.2f}x"
        held = r.get("cache_bytes") or {}
        lines.append(
            f"| {r['model']} | {r['workload']} | {r['batch']} | {r['prompt_len']} | {r['device']} | "
            f"{r.get('kv_cache_dtype') or 'exact'} | {w:.2f} | "
            f"{_above(u, w)} ({r['estimated_uncached_peak_gb'] - w:.2f}) | "
            f"{_above(c, w)} ({r['estimated_cached_peak_gb'] - w:.2f}) | {ratio} | "
            f"{human_bytes(held.get('total'))} |"
            + (f" {r['error']}" if r.get("error") else "")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=SHAPES, help="random-weight model of this shape")
    src.add_argument("--model", help="local model directory (AutoModel)")
    p.add_argument("--runs", nargs="+", required=True, help="WORKLOAD:B1,B2,... (see above)")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", help="default cuda if available, else cpu")
    p.add_argument("--prompt-interval", type=int, default=100)
    p.add_argument("--response-interval", type=int, default=8)
    p.add_argument("--transfer-ratio", type=float, default=0.25)
    p.add_argument("--kv-cache-dtype", choices=tuple(KV_CACHE_DTYPES), default=None,
                   help="cached runs store K/V as fp8 (CacheConfig.kv_cache_dtype; lossy); default exact")
    p.add_argument("--uncached-steps", type=int, default=2, help="steps of the uncached run (each step is alike)")
    p.add_argument("--max-length", type=int, default=None,
                   help="lift the model's position limit to this many tokens (LLaDA-8B's config says 4096; "
                        "the issue's 16k-token prompt needs 16032)")
    p.add_argument("--out", type=Path, default=Path("eval/results/memory.json"))
    args = p.parse_args(argv)
    old = json.loads(args.out.read_text()) if args.out.exists() else []

    def save(new: list[dict[str, Any]]) -> None:
        rows = merge(old, new)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(rows))

    rows = merge(old, measure_rows(args, on_row=save))  # on_row has written every row already
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
