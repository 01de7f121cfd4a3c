"""Data-parallel lm-eval with the `dllm_cache` model: one full replica per process, requests sharded by
rank (lm-eval's own data parallelism), results gathered on rank 0 and written as one JSON file.

    python -m eval.multi_gpu run --model_args pretrained=DIR,device=cuda,... --tasks gsm8k_local \
        --limit 200 --out eval/results/dp_1gpu.json                                  # one process
    accelerate launch --multi_gpu --num_processes 2 -m eval.multi_gpu run \
        --model_args pretrained=DIR,... --tasks gsm8k_local --limit 200 --out eval/results/dp_2gpu.json
    python -m eval.multi_gpu compare eval/results/dp_1gpu.json eval/results/dp_2gpu.json \
        --out eval/results/dp_compare.json

`eval/multi_gpu/gpu.sh` runs the three on a two-GPU machine. The same data-parallel path runs on CPU
processes (gloo: `accelerate launch --cpu --num_processes 2 ...` with device=cpu), which is how
tests/test_multi_gpu_eval.py checks it. Per example the replicas compute what one process computes
when every batch holds the same prompts: at batch_size=1 the outputs must be identical (LLaDA numbers
positions from 0 whatever the left padding, so a different batch mix changes padded rows' positions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from dllm_cache.integrations.lm_eval.tasks import TASKS_DIR  # the local tasks, installed with the package


def _device_name(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _samples(results: dict) -> dict[str, list[dict[str, Any]]]:
    """Per task, per document and filter (a task with two filters, as gsm8k's strict-match and
    flexible-extract, logs each document twice): the filtered response and its metrics."""
    out = {}
    for task, rows in (results.get("samples") or {}).items():
        kept = []
        for row in rows:
            metrics = {m: row[m] for m in row.get("metrics", []) if m in row}
            kept.append({"doc_id": row["doc_id"], "filter": row.get("filter"), "response": row["filtered_resps"],
                         "metrics": metrics})
        out[task] = sorted(kept, key=lambda r: (r["doc_id"], str(r["filter"])))
    return out


def run(args: argparse.Namespace) -> int:
    """Evaluate on this process's shard; rank 0 writes the report. Every rank then leaves the
    process group together (exiting with it still up can abort a rank in gloo's teardown)."""
    try:
        return _run(args)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from dllm_cache.integrations.lm_eval.model import DLLMCacheLM

    lm = DLLMCacheLM.create_from_arg_string(args.model_args)
    tasks = [t for t in args.tasks.split(",") if t]
    task_manager = TaskManager(include_path=str(args.include_path), include_defaults=False)
    lm.barrier()
    t0 = time.perf_counter()
    results = simple_evaluate(
        model=lm, tasks=tasks, limit=args.limit, task_manager=task_manager, log_samples=True,
        bootstrap_iters=args.bootstrap_iters,
    )
    wall = time.perf_counter() - t0
    rank_info = {
        "rank": lm.rank,
        "device": str(lm.device),
        "device_name": _device_name(lm.device),
        "wall_seconds": wall,
        "last_generate_call": dict(getattr(lm, "last_stats", {}) or {}),
    }
    ranks = lm.gather_object(rank_info, dst=0)
    if lm.rank != 0:
        return 0
    samples = _samples(results)
    n_examples = sum(len({r["doc_id"] for r in rows}) for rows in samples.values())  # documents, not filter rows
    slowest = max(r["wall_seconds"] for r in ranks)
    # Generation alone (no task building, gathering or one-time warm-up outside generate_until), slowest rank.
    gen = [r["last_generate_call"].get("generate_seconds") for r in ranks]
    gen_slowest = max(gen) if all(isinstance(g, (int, float)) for g in gen) and len(tasks) == 1 else None
    report = {
        "argv": sys.argv[1:],
        "launcher_env": {k: os.environ[k] for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")
                         if k in os.environ},
        "world_size": lm.world_size,
        "model_args": args.model_args,
        "tasks": tasks,
        "limit": args.limit,
        "metrics": {task: {k: v for k, v in values.items() if k != "alias"} for task, values in results["results"].items()},
        "ranks": ranks,
        "throughput": {
            "examples": n_examples,
            "wall_seconds": slowest,
            "examples_per_second": n_examples / slowest if slowest > 0 else None,
            "generated_tokens_per_second": n_examples * lm.gen_length / slowest if slowest > 0 else None,
            "generate_seconds": gen_slowest,
            "examples_per_generate_second": n_examples / gen_slowest if gen_slowest else None,
        },
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tp = report["throughput"]
    print(f"[multi_gpu_eval] world_size={lm.world_size} examples={n_examples} wall={slowest:.2f}s "
          f"({tp['examples_per_second']:.3f} examples/s) metrics={report['metrics']} -> {out}", flush=True)
    return 0


def compare(args: argparse.Namespace) -> int:
    """Same examples, same outputs, same metrics? And the throughput ratio. Exit 1 on any difference."""
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    problems = []
    if a["tasks"] != b["tasks"] or a["limit"] != b["limit"]:
        problems.append(f"different runs: tasks {a['tasks']} vs {b['tasks']}, limit {a['limit']} vs {b['limit']}")
    differing: dict[str, list[int]] = {}
    for task in a["tasks"]:
        rows_a = {(r["doc_id"], r.get("filter")): r for r in a["samples"].get(task, [])}
        rows_b = {(r["doc_id"], r.get("filter")): r for r in b["samples"].get(task, [])}
        if set(rows_a) != set(rows_b):
            problems.append(f"{task}: documents differ ({len(rows_a)} vs {len(rows_b)})")
        differing[task] = sorted({key[0] for key in set(rows_a) & set(rows_b) if rows_a[key] != rows_b[key]})
        if differing[task]:
            problems.append(f"{task}: {len(differing[task])} documents with different outputs: {differing[task][:10]}")
        if a["metrics"].get(task) != b["metrics"].get(task):
            problems.append(f"{task}: metrics differ: {a['metrics'].get(task)} vs {b['metrics'].get(task)}")
    ta, tb = a["throughput"], b["throughput"]
    speedup = tb["examples_per_second"] / ta["examples_per_second"] if ta["examples_per_second"] else None
    ga, gb = ta.get("examples_per_generate_second"), tb.get("examples_per_generate_second")
    gen_speedup = gb / ga if ga and gb else None
    report = {
        "a": {"file": args.a, "world_size": a["world_size"], "throughput": ta,
              "devices": [r["device_name"] for r in a["ranks"]]},
        "b": {"file": args.b, "world_size": b["world_size"], "throughput": tb,
              "devices": [r["device_name"] for r in b["ranks"]]},
        "metrics": {"a": a["metrics"], "b": b["metrics"]},
        "documents_with_different_outputs": differing,
        "identical": not problems,
        "problems": problems,
        "throughput_ratio_b_over_a": speedup,
        "generate_throughput_ratio_b_over_a": gen_speedup,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ratio = f"{speedup:.2f}x" if speedup else "n/a"
    gen_ratio = f"{gen_speedup:.2f}x" if gen_speedup else "n/a"
    print(f"[multi_gpu_eval compare] identical={not problems}; world size {a['world_size']} -> {b['world_size']}: "
          f"{ta['examples_per_second']:.3f} -> {tb['examples_per_second']:.3f} examples/s ({ratio} end to end, "
          f"{gen_ratio} in generation)", flush=True)
    for p in problems:
        print("  " + p, flush=True)
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="evaluate (under accelerate launch for data parallel) and write a results JSON")
    r.add_argument("--model_args", required=True, help="as lm-eval's --model_args for --model dllm_cache")
    r.add_argument("--tasks", required=True, help="comma-separated task names (local YAMLs)")
    r.add_argument("--limit", type=int, default=None)
    r.add_argument("--include_path", default=TASKS_DIR)
    r.add_argument("--bootstrap_iters", type=int, default=0, help="stderr bootstrap samples (0: none)")
    r.add_argument("--out", required=True, help="results JSON (written by rank 0)")
    c = sub.add_parser("compare", help="compare two results JSON files (e.g. one GPU vs two)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
