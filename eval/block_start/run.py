"""CPU quality check of CacheConfig(block_start="incremental") against Fast-dLLM's block start and uncached.

The shipped LLaDA proxy (dllm_cache.shipped.default_model_dir()) on its held-out arithmetic problems
(default_prompts_file(), the first n), gen 256, block 8 as the frontier runs, greedy; two decodings: a
fixed schedule of one token per step (256 steps) and confidence threshold 0.9. Per decoding: uncached,
block-dual (a full forward at every block start) and block-dual with block_start="incremental" (Kp 100:
full forwards on steps 0, 100 and 200 of a generation; and Kp 32). Every row: accuracy, agreement of the final
number with uncached, the exact McNemar p on the same problems (dllm_cache/analysis/paired.py), analytic FLOPs
per problem (dllm_cache.analysis.flops at batch 1, the problem's own prompt length, the steps its batch
took per block) and the CPU wall clock.

    PYTHONPATH=. python -m eval.block_start --decoding "threshold 0.9" --n 96          # -> eval/results/block_start_cpu.{json,md}
    PYTHONPATH=. python -m eval.block_start --decoding "one token per step" --n 48   # adds its section

Generation stops once every row of a batch has its answer and end-of-text (stop_at_eos, the same rule
for every row of the table), which is what makes uncached decoding affordable on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats, shipped
from dllm_cache.analysis.flops import ModelDims, generation_cost
from dllm_cache.analysis.paired import correct_indices, paired_object
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import DecodeTrace, steps_per_block

RESULTS = Path(__file__).resolve().parents[1] / "results"
GEN, BLOCK = 256, 8
DECODINGS = {"one token per step": dict(steps=GEN), "threshold 0.9": dict(steps=GEN, threshold=0.9)}
SETTINGS = {
    "uncached": None,
    "block-dual (Fast-dLLM: full forward per block)": CacheConfig(policy="block-dual"),
    "block-dual, block_start=incremental (Kp 100)": CacheConfig(policy="block-dual", block_start="incremental"),
    "block-dual, block_start=incremental (Kp 32)": CacheConfig(policy="block-dual", block_start="incremental",
                                                               prompt_interval=32),
}


def result_path(base: Path, suffix: str) -> Path:
    """`base` + `suffix` (".json", ".md"): the CPU studies' `--out` names a pair of files without their extension,
    and `Path.with_suffix` would take a dot in that name for one (`..._thr0.9` -> `..._thr0.json`); an extension
    given anyway is dropped first."""
    name = base.name
    for ext in (".json", ".md"):
        name = name.removesuffix(ext)
    return base.with_name(name + suffix)


def cpu_meta() -> dict:
    """The model, problems, lengths and machine a CPU quality run records (this study's and eval/adaptive_interval's)."""
    return {"model": str(shipped.default_model_dir()), "prompts": str(shipped.default_prompts_file()),
            "gen_length": GEN, "block_length": BLOCK,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def load(n: int):
    from eval.tiny.evaluate import load_model

    model, tok = load_model(str(shipped.default_model_dir()), "cpu", torch.float32)
    with open(shipped.default_prompts_file()) as f:
        problems = [json.loads(line) for _, line in zip(range(n), f)]
    return model, tok, problems


def sorted_batches(tok, prompts: list[str], batch: int):
    """The CPU studies' batching (this one, eval/adaptive_interval, eval/divergence): prompts sorted by token
    length, `batch` at a time, left padded. Yields (the batch's indices into `prompts`, its encoding)."""
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        yield idx, tok([prompts[i] for i in idx], padding=True, return_tensors="pt", add_special_tokens=False)


def add_stats(total: dict, stats: dict) -> None:
    """Sum one generate() call's cache_stats counters into `total` (the study's whole run)."""
    for k, v in stats.items():
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v


def run_setting(model, tok, problems: list[dict], config, decoding: dict, batch: int) -> dict:
    """Generate every problem (batches sorted by prompt length, left padded) under `config`."""
    prompts = [shipped.arith_prompt(p["question"]) for p in problems]
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    texts, flops, steps = [""] * len(prompts), [0.0] * len(prompts), 0
    dims = ModelDims.from_config(model.config)
    stats: dict = {}
    t0 = time.perf_counter()
    for idx, enc in sorted_batches(tok, prompts, batch):
        trace = DecodeTrace()
        opts = dict(gen_length=GEN, block_length=BLOCK, temperature=0.0, stop_at_eos=True, trace=trace, **decoding)
        if config is None:
            out = generate(model, enc["input_ids"], enc["attention_mask"], **opts)
        else:
            with cache_enabled(model, config):
                out = generate(model, enc["input_ids"], enc["attention_mask"], **opts)
                add_stats(stats, cache_stats(model))
        per_block = steps_per_block(trace.rows(), GEN // BLOCK)  # the batch's steps in each block
        steps += sum(per_block)
        for row, i in enumerate(idx):
            texts[i] = tok.decode(out[row, enc["input_ids"].shape[1] :].tolist(), skip_special_tokens=True)
            flops[i] = generation_cost(dims, 1, lengths[i], GEN, GEN, config, BLOCK, steps_per_block=per_block).flops
    seconds = time.perf_counter() - t0
    return {"texts": texts, "flops": sum(flops) / len(flops), "seconds": seconds, "steps": steps, "cache_stats": stats}


def run(n: int, batch: int, decodings: list[str]) -> dict:
    torch.manual_seed(0)
    model, tok, problems = load(n)
    answers = [shipped.final_number(p["answer"]) for p in problems]
    out = {}
    for name in decodings:
        rows, base = [], None
        for setting, config in SETTINGS.items():
            r = run_setting(model, tok, problems, config, DECODINGS[name], batch)
            keys = [shipped.final_number(t) for t in r["texts"]]
            ok = correct_indices(k is not None and k == a for k, a in zip(keys, answers))
            if base is None:
                base = {"keys": keys, "ok": ok, "flops": r["flops"], "seconds": r["seconds"]}
            rows.append({
                "setting": setting,
                "config": None if config is None else {"policy": config.policy, "block_start": config.block_start,
                                                       "prompt_interval": config.prompt_interval},
                "n": n, "correct": len(ok), "accuracy": len(ok) / n,
                "agreement_with_uncached": sum(a == b for a, b in zip(keys, base["keys"])) / n,
                "paired": None if config is None else paired_object(ok, base["ok"], n),
                "correct_ids": ok,
                "flops_per_problem": r["flops"], "flops_vs_uncached": r["flops"] / base["flops"],
                "cpu_seconds": r["seconds"], "speedup_cpu": base["seconds"] / r["seconds"],
                "denoising_steps": r["steps"], "cache_stats": r["cache_stats"] or None,
                "samples": [{"generated": t, "answer": p["answer"]} for t, p in zip(r["texts"][:2], problems[:2])],
            })
            print(f"[block_start] {name} / {setting}: {len(ok)}/{n} right, {r['seconds']:.0f} s", file=sys.stderr)
        out[name] = {"n": n, "batch": batch, "rows": rows}
    return out


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# block_start=\"incremental\" on CPU: the shipped LLaDA proxy, held-out arith",
        "",
        f"Model: {meta['model']}; problems: the first n of {meta['prompts']}; gen {GEN}, block {BLOCK}, "
        "greedy, batches of sorted prompts (left padded), stop at end-of-text once every row of a batch is done. "
        f"Machine: {meta['machine']}. Commands: " + "; ".join(f"`{c}`" for c in meta["commands"]) + ".",
        "",
        "FLOPs: analytic (dllm_cache.analysis.flops.generation_cost at batch 1, each problem's prompt length, the "
        "steps its batch took per block), mean per problem. p: exact McNemar against uncached on the same problems "
        "(b: right only cached, c: right only uncached). CPU seconds: whole run, fp32, shared 2-core machine (noisy; "
        "GPU speed is not measured here).",
        "",
    ]
    for name, part in report["decodings"].items():
        rows = part["rows"]
        lines += [f"## {name} (n {part['n']}, batch {part['batch']})", "",
                  "| setting | accuracy | agreement | b / c | p | FLOPs / problem | FLOPs vs uncached | steps | CPU s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            p = r["paired"]
            bc = "-" if p is None else f"{p['cached_right_uncached_wrong']} / {p['cached_wrong_uncached_right']}"
            pv = "-" if p is None else f"{p['p_value']:.3g}"
            lines.append(f"| {r['setting']} | {r['correct']}/{r['n']} ({100 * r['accuracy']:.1f}%) | "
                         f"{100 * r['agreement_with_uncached']:.1f}% | {bc} | {pv} | {r['flops_per_problem']:.3g} | "
                         f"{r['flops_vs_uncached']:.3f} | {r['denoising_steps']} | {r['cpu_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=96, help="problems per generate() call")
    ap.add_argument("--decoding", nargs="+", choices=tuple(DECODINGS), default=list(DECODINGS))
    ap.add_argument("--out", type=Path, default=RESULTS / "block_start_cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    decodings = run(args.n, args.batch, args.decoding)
    path = result_path(args.out, ".json")
    old = json.loads(path.read_text()) if path.exists() else {}
    decodings = {**old.get("decodings", {}), **decodings}  # one decoding per call: keep the others' rows
    command = "PYTHONPATH=. python -m eval.block_start " + shlex.join(argv if argv is not None else sys.argv[1:])
    commands = [c for c in old.get("meta", {}).get("commands", []) if c != command] + [command]
    report = {
        "meta": {
            **cpu_meta(),
            "commands": commands,
            "wall_seconds_last_run": time.perf_counter() - t0,
        },
        "decodings": decodings,
    }
    path.write_text(json.dumps(report, indent=1) + "\n")
    result_path(args.out, ".md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0
