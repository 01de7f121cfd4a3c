"""The bench's command line (`dllm-cache bench`, `python -m dllm_cache.bench`): the parser, the device check,
the dry run's analytic estimate, and main, which runs the bench (runner.py) and writes its outputs."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from dllm_cache.analysis.flops import (
    STEP_KINDS,
    ModelDims,
    generation_cost,
    step_flops,
)
from dllm_cache.bench import memory as bench_memory
from dllm_cache.bench.decoding import Decoding, load_decoding, run_kinds
from dllm_cache.bench.factory import DTYPES, SHAPES, TASKS, WORKLOADS, _config_for
from dllm_cache.bench.peaks import PEAK_MODES
from dllm_cache.bench.report import markdown_table
from dllm_cache.bench.runner import POLICIES, _settings, _warmup_steps, _window, _windowed, _workload, run_bench, write_outputs
from dllm_cache.engine.kv_store import KV_CACHE_DTYPES

# ----------------------------------------------------------------------------- planning


DRY_RUN_PEAKS = (790.0, 3.0)  # TFLOP/s, TB/s: the dry run's roofline when none is given (H100, measured here)


def dry_run(args: argparse.Namespace) -> str:
    """Analytic FLOPs/roofline and a GPU-time estimate, without building a model.

    Estimated step time = max(FLOPs / --assume-tflops, bytes / --assume-tbps) +
    --assume-overhead-ms (kernel launches, the cache's gathers, the sampler).
    """
    config = _config_for(args)
    dims = ModelDims.from_config(config)
    decoding = load_decoding(args.threshold, args.factor, args.trace)
    w = _workload(args, config, decoding)
    tied = bool(getattr(config, "weight_tying", False))  # LLaDA: no separate head to patch
    family = bench_memory.family_of_config(config)
    cached_rows = bench_memory.head_rows(family, w.prompt_len, w.gen_len, w.block_length, tied)
    settings = _settings(args)
    window = _window(args, [s for s in settings if _windowed(decoding, s)], w.steps)
    dtype_bytes = torch.finfo(DTYPES[args.dtype or "bf16"]).bits // 8

    def step_s(flops: int, nbytes: int) -> float:
        return max(flops / (args.assume_tflops * 1e12), nbytes / (args.assume_tbps * 1e12)) + (
            args.assume_overhead_ms / 1e3
        )

    lines = [
        f"dry run: {args.model or args.shape} dims {dims.to_dict()}",
        f"workload {asdict(w)}; decoding {decoding.label or 'fixed'}; timed steps {window or 'all'} x {args.repeats} "
        f"+ warm-up per run; estimates at {args.assume_tflops} TFLOP/s, {args.assume_tbps} TB/s, "
        f"+{args.assume_overhead_ms} ms/step",
        "| batch | cache | steps | TFLOP (whole gen) | FLOP cut | roofline s | est. gen s | est. GPU s in bench "
        "| est. peak GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    plan = [(None, Decoding())] + ([] if decoding.fixed else [(None, decoding)]) + [(s, decoding) for s in settings]
    for batch in args.batch_size:
        base = None
        for setting, dec in plan:
            cfg = setting.to_config() if setting else None
            per_block = dec.steps_per_block(batch, w.gen_len, w.block_length)
            committed = dec.committed(batch, w.gen_len, w.block_length)
            kinds = run_kinds(cfg, w.prompt_len, w.gen_len, w.steps, w.block_length, per_block, dims.logit_shift,
                              committed)
            cost = generation_cost(
                dims, batch, w.prompt_len, w.gen_len, w.steps, cfg, w.block_length,
                logits_tokens=cached_rows if setting else w.prompt_len + w.gen_len, dtype_bytes=dtype_bytes,
                peak_tflops=args.peak_tflops or DRY_RUN_PEAKS[0], peak_tbps=args.peak_tbps or DRY_RUN_PEAKS[1],
                steps_per_block=per_block, committed=committed,
            )
            peak = bench_memory.run_peak(config, batch, w.prompt_len, w.gen_len, w.block_length, dtype_bytes,
                                         setting is not None, deltas=cfg is None or not cfg.is_block,
                                         kv_cache_dtype=args.kv_cache_dtype)["total"]
            base = base or cost.flops
            per_step = {k: step_s(cost.flops_per_kind.get(k, 0), cost.bytes_per_kind.get(k, 0)) for k in STEP_KINDS}
            gen_s = sum(per_step[k] for k in kinds)
            windowed = _windowed(dec, setting)
            timed = (window or len(kinds)) if windowed else len(kinds)
            runs = [_warmup_steps(args, setting, len(kinds), whole=not windowed)] + [timed] * args.repeats
            bench_s = sum(per_step[k] for n in runs for k in kinds[:n])
            total += bench_s
            label = (setting.label if setting else "uncached") + (f" + {dec.label}" if dec.label else "")
            lines.append(
                f"| {batch} | {label} | {len(kinds)} | {cost.flops / 1e12:.1f} | {base / cost.flops:.2f}x | "
                f"{cost.roofline_s:.2f} | {gen_s:.2f} | {bench_s:.1f} | {peak / 2**30:.1f} |"
            )
        total += step_s(step_flops(dims, batch, w.prompt_len, w.gen_len, "full"), 0)  # FLOP check
    lines.append(
        f"estimated GPU compute in timed + warm-up runs + FLOP checks: {total:.0f} s "
        "(add ~20-30 s for process start, imports and model build)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dllm-cache bench",
        description="Time cached vs uncached diffusion-LM generation; report FLOPs and roofline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local model directory (loaded with AutoModel)")
    src.add_argument("--shape", choices=SHAPES, help="random-weight model of this shape")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="None: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", help="None: cuda if available, else cpu")
    p.add_argument("--init-std", type=float, default=0.02, help="random-weight init std")
    p.add_argument("--init", choices=("seeded", "by-name"), default="seeded",
                   help="--shape weights: one seeded stream, or each matrix seeded by its name (eval/peers/run.py's "
                        "scheme: the same weights as the peers' code gets there)")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights and prompts)")
    p.add_argument("--workload", choices=tuple(WORKLOADS),
                   help="gsm8k: prompt 700, gen 256, steps 256, block 32; "
                        "hotpotqa: prompt 4000, gen 32, steps 32, block 32")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (None: from --workload)")
    p.add_argument("--gen-len", type=int, help="generated tokens (None: from --workload)")
    p.add_argument("--steps", type=int, help="denoising steps (None: from --workload)")
    p.add_argument("--block-length", type=int, help="LLaDA block length (None: from --workload, else one block)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1], help="batch sizes to run")
    p.add_argument("--transfer-ratio", type=float, nargs="+", default=[0.25], help="cache transfer ratios to run")
    p.add_argument("--response-interval", type=int, nargs="+", default=[8], help="cache Kr values to run")
    p.add_argument("--prompt-interval", type=int, nargs="+", default=[100], help="cache Kp values to run")
    p.add_argument("--compile", choices=("off", "on", "both"), default="off",
                   help="run cached configs with CacheConfig(compile=True) (torch.compile of the cached layer)")
    p.add_argument("--policy", nargs="+", choices=tuple(POLICIES), default=["frontier"],
                   help="cache policies to run: the feature cache's selections (CacheConfig.selection / "
                        "frontier_only), each with every setting, and Fast-dLLM's block KV caches "
                        "(CacheConfig.policy block-prefix / block-dual, one run each). Default 'frontier', "
                        "CacheConfig()'s own selection; the earlier speed and memory rows were measured with "
                        "'paper' (same FLOPs), which their scripts name")
    p.add_argument("--kv-cache-dtype", choices=tuple(KV_CACHE_DTYPES), default=None,
                   help="store every cached run's K/V as fp8 (CacheConfig.kv_cache_dtype; lossy, about half the K/V "
                        "bytes); default: exact, in the model's dtype")
    p.add_argument("--dream-block-length", type=int,
                   help="semi-AR block of the Dream sampler (default none: Dream's own single window; "
                        "--block-length and the workloads' blocks are LLaDA's)")
    dec = p.add_mutually_exclusive_group()
    dec.add_argument("--threshold", type=float, help="parallel decoding: unmask every token above this confidence")
    dec.add_argument("--factor", type=float, help="parallel decoding: Fast-dLLM's factor rule")
    dec.add_argument("--trace", help="replay a decoding trace (eval/traces/run.py JSON): the steps real parallel "
                                     "decoding took on a trained proxy; sets gen length and block")
    p.add_argument("--grid", choices=("axes", "product"), default="axes",
                   help="axes: vary one knob at a time around the reference (0.25, Kr 8, Kp 100 "
                        "or the first value given); product: every combination")
    p.add_argument("--max-steps", type=int,
                   help="time only the first N denoising steps (>= max Kr + 1) and extrapolate "
                        "per step kind; None: whole generations")
    p.add_argument("--warmup-steps", type=int,
                   help="steps of the untimed warm-up run per configuration (None: 2 uncached, 2 Kr + 1 cached)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per configuration: the table shows their median and spread (min-max)")
    p.add_argument("--peaks", choices=PEAK_MODES, default="measure",
                   help="where the roofline's peaks come from on CUDA: measure (a timed device copy and bf16 matmul, "
                        "~1 s) or table (vendor figures by device name; unknown names are measured); CPU: none")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense TFLOP/s for the roofline (None: from --peaks; --dry-run: 790)")
    p.add_argument("--peak-tbps", type=float, default=None,
                   help="peak HBM TB/s for the roofline and the weight-read floor (None: from --peaks; --dry-run: 3.0)")
    p.add_argument("--task", choices=TASKS,
                   help="quality eval: not implemented in the bench (see dllm-cache eval)")
    p.add_argument("--out-dir", type=Path, default=Path("dllm_cache_results"),
                   help="folder for <tag>.json/.md/.png, created if missing (relative to the current directory)")
    p.add_argument("--tag", help="output file stem (None: bench-<model>-<workload>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print analytic FLOPs and a GPU-time estimate, run nothing")
    p.add_argument("--assume-tflops", type=float, default=400.0,
                   help="effective TFLOP/s for --dry-run estimates")
    p.add_argument("--assume-tbps", type=float, default=2.0, help="effective TB/s for --dry-run estimates")
    p.add_argument("--assume-overhead-ms", type=float, default=5.0,
                   help="per-step launch/sampler overhead for --dry-run estimates")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--step-progress", action="store_true", help="per-step bars from generate")
    return p


def device_problem(device: str | None) -> str | None:
    """Why `device` cannot run here (one line), or None: checked before any model loads. None (the default:
    cuda if available, else cpu) always runs."""
    if device is None:
        return None
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)."
    if kind == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu."
    if kind == "cuda" and torch.device(device).index is not None and torch.device(device).index >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
    if kind == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: MPS is not available here; use --device cpu."
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = device_problem(args.device)
    if problem:
        raise SystemExit(f"dllm-cache bench: error: {problem}")
    for name in ("transfer_ratio",):
        bad = [v for v in getattr(args, name) if not 0.0 <= v <= 1.0]
        if bad:
            raise SystemExit(f"--transfer-ratio values must be in [0, 1], got {bad}")
    if args.tag is None:
        stem = (Path(args.model).name if args.model else args.shape) or "model"
        args.tag = f"bench-{stem}-{args.workload or 'custom'}"
    if args.task:
        print(
            f"[bench] --task {args.task}: quality evaluation is not implemented in the bench "
            "(it measures speed only); use `dllm-cache eval`. Continuing with the speed run.",
            file=sys.stderr,
        )
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    try:
        if args.dry_run:
            print(dry_run(args))
            return 0
        report = run_bench(args, on_row=lambda partial: write_outputs(partial, args.out_dir, args.tag, draw=False))
    except ValueError as err:  # the shapes and settings checks: their message is the whole story
        raise SystemExit(f"dllm-cache bench: error: {err}") from None
    paths = write_outputs(report, args.out_dir, args.tag)
    print(f"[bench] wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
