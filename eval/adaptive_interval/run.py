"""CPU quality check of the adaptive response interval (CacheConfig.response_clock="tokens").

Under threshold decoding several tokens commit per step, so the response features go stale faster per
step and a fixed Kr of 8 steps loses accuracy (DESIGN.md: Kr 8 lost 2.2 points at threshold 0.9, Kr 2
kept them). response_clock "tokens" refreshes the response once the batch's rows have committed Kr tokens
each on average since the last refresh, or after Kr steps. This runner compares, on the shipped LLaDA proxy's
held-out arithmetic (the first n problems, gen 256, block 8, greedy, threshold 0.9, one batch of sorted
left-padded prompts, stop at end-of-text as eval/block_start does):

- uncached;
- the default, CacheConfig() = response_clock "steps" (Kp 100, Kr 8 steps, ratio 0.25, frontier);
- the same with response_clock "tokens" (Kr 8 tokens or steps; opt-in after this study);
- the paper default: Kp 100, Kr 8 steps, ratio 0.25, selection "paper" (the FLOPs budget issue 28 names);
- (--extra) Kr 2 steps with the frontier selection, the fixed interval that kept accuracy.

Per row: accuracy, agreement with uncached, exact McNemar p against uncached (dllm_cache/analysis/paired.py),
analytic FLOPs per problem two ways: as run (the batch's own plan: each step's kind as the engine planned it
for the whole batch, from the batch's trace; checked against the engine's cache_stats) and at batch 1 (each
problem's own trace through the same planner: the plan a lone row would get if it decoded the same tokens),
each against uncached and against the paper default.

    PYTHONPATH=. nice -n 10 python -m eval.adaptive_interval --n 96        # -> eval/results/adaptive_interval_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats, shipped
from dllm_cache.analysis.flops import FEATURE_KINDS, ModelDims, feature_kinds, generation_cost
from dllm_cache.analysis.paired import correct_indices, paired_object
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import DecodeTrace, committed_per_step
from eval.block_start.run import BLOCK, GEN, add_stats, cpu_meta, load, result_path, sorted_batches

RESULTS = Path(__file__).resolve().parents[1] / "results"
THRESHOLD = 0.9
PAPER = "paper default (Kp 100, Kr 8 steps, r 0.25, selection paper)"
STEPS, TOKENS = "default (Kr 8 steps, frontier)", "response_clock=tokens (Kr 8 tokens or steps, frontier)"
SETTINGS = {
    "uncached": None,
    STEPS: CacheConfig(response_clock="steps"),
    TOKENS: CacheConfig(response_clock="tokens"),
    PAPER: CacheConfig(selection="paper", response_clock="steps"),
}
EXTRA = {"Kr 2 steps, frontier": CacheConfig(response_interval=2, response_clock="steps")}


def _cost(dims, prompt_len: int, config, committed: list[list[int]]) -> float:
    """Analytic FLOPs of one problem at batch 1 under the plan `committed` implies (one entry per step)."""
    return float(generation_cost(dims, 1, prompt_len, GEN, len(committed), config, BLOCK, committed=committed).flops)


def run_setting(model, tok, problems: list[dict], config, batch: int) -> dict:
    """Generate every problem (batches sorted by prompt length, left padded) under `config`."""
    prompts = [shipped.arith_prompt(p["question"]) for p in problems]
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    texts = [""] * len(prompts)
    as_run, alone = [0.0] * len(prompts), [0.0] * len(prompts)
    dims = ModelDims.from_config(model.config)
    stats: dict = {}
    steps = 0
    t0 = time.perf_counter()
    for idx, enc in sorted_batches(tok, prompts, batch):
        trace = DecodeTrace()
        opts = dict(gen_length=GEN, block_length=BLOCK, temperature=0.0, stop_at_eos=True, trace=trace,
                    steps=GEN, threshold=THRESHOLD)
        if config is None:
            out = generate(model, enc["input_ids"], enc["attention_mask"], **opts)
        else:
            with cache_enabled(model, config):
                out = generate(model, enc["input_ids"], enc["attention_mask"], **opts)
                got = cache_stats(model)
            add_stats(stats, got)
        rows = trace.rows()
        committed = committed_per_step(rows, GEN // BLOCK)  # (steps, batch): what the sampler reported
        steps += len(committed)
        if config is not None:  # the planner must agree with the engine, step kind by step kind
            planned = feature_kinds(len(committed), config, committed)
            names = {"full": "full_steps", "response": "response_refresh_steps", "prompt": "prompt_refresh_steps",
                     "partial": "partial_steps"}
            engine = {k: got[names[k]] for k in FEATURE_KINDS}
            if {k: planned.count(k) for k in FEATURE_KINDS} != engine:
                raise AssertionError(f"planned step kinds {planned} disagree with the engine's {engine}")
        for row, i in enumerate(idx):
            texts[i] = tok.decode(out[row, enc["input_ids"].shape[1] :].tolist(), skip_special_tokens=True)
            as_run[i] = _cost(dims, lengths[i], config, committed)
            own = committed_per_step([rows[row]], GEN // BLOCK)
            alone[i] = _cost(dims, lengths[i], config, own)
    seconds = time.perf_counter() - t0
    n = len(prompts)
    return {"texts": texts, "flops_as_run": sum(as_run) / n, "flops_batch1": sum(alone) / n, "seconds": seconds,
            "steps": steps, "cache_stats": stats}


def run(n: int, batch: int, extra: bool, work_dir: Path) -> dict:
    torch.manual_seed(0)
    model, tok, problems = load(n)
    answers = [shipped.final_number(p["answer"]) for p in problems]
    settings = {**SETTINGS, **(EXTRA if extra else {})}
    results = {}
    for setting, config in settings.items():
        # each setting's run kept on disk, so an interrupted study resumes (the uncached row is the long one)
        kept = work_dir / f"n{n}_b{batch}_{''.join(c if c.isalnum() else '_' for c in setting)}.json"
        if kept.exists() and json.loads(kept.read_text())["config"] == repr(config):
            results[setting] = json.loads(kept.read_text())["result"]
        else:
            results[setting] = run_setting(model, tok, problems, config, batch)
            work_dir.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({"config": repr(config), "result": results[setting]}))
        print(f"[adaptive_interval] {setting}: {results[setting]['seconds']:.0f} s", file=sys.stderr)
    base, paper = results["uncached"], results[PAPER]
    base_keys = [shipped.final_number(t) for t in base["texts"]]
    base_ok = correct_indices(k is not None and k == a for k, a in zip(base_keys, answers))
    rows = []
    for setting, config in settings.items():
        r = results[setting]
        keys = [shipped.final_number(t) for t in r["texts"]]
        ok = correct_indices(k is not None and k == a for k, a in zip(keys, answers))
        rows.append({
            "setting": setting,
            "config": None if config is None else {"prompt_interval": config.prompt_interval,
                                                   "response_interval": config.response_interval,
                                                   "transfer_ratio": config.transfer_ratio,
                                                   "selection": config.selection,
                                                   "response_clock": config.response_clock},
            "n": n, "correct": len(ok), "accuracy": len(ok) / n,
            "agreement_with_uncached": sum(a == b for a, b in zip(keys, base_keys)) / n,
            "paired": None if config is None else paired_object(ok, base_ok, n),
            "correct_ids": ok,
            "flops_per_problem_as_run": r["flops_as_run"],
            "flops_vs_uncached_as_run": r["flops_as_run"] / base["flops_as_run"],
            "flops_vs_paper_as_run": r["flops_as_run"] / paper["flops_as_run"],
            "flops_per_problem_batch1": r["flops_batch1"],
            "flops_vs_uncached_batch1": r["flops_batch1"] / base["flops_batch1"],
            "flops_vs_paper_batch1": r["flops_batch1"] / paper["flops_batch1"],
            "cpu_seconds": r["seconds"], "denoising_steps": r["steps"], "cache_stats": r["cache_stats"] or None,
            "samples": [{"generated": t, "answer": p["answer"]} for t, p in zip(r["texts"][:2], problems[:2])],
        })
    return {"n": n, "batch": batch, "threshold": THRESHOLD, "rows": rows}


REAL_TRACE = RESULTS / "traces_real-llada_gen256.json"  # LLaDA-8B's published rate: ~3.2 tokens/step
REAL_PROMPT, REAL_GEN, REAL_BLOCK = 700, 256, 32  # the bench's gsm8k workload (dllm_cache.bench.factory)


def real_rate_flops(batches: tuple[int, ...] = (1, 16)) -> dict:
    """Analytic FLOPs on the LLaDA-8B shape at the real decoding rate (the real-rate trace's 64 rows, gen 256,
    block 32, prompt 700): per setting, FLOPs per problem vs uncached and vs the paper default, at batch 1
    (each row's own plan) and batch 16 (rows 16 at a time: the batch rule)."""
    from dllm_cache.models.tiny import llada_8b_config
    from dllm_cache.sampling.trace import read_trace

    dims = ModelDims.from_config(llada_8b_config())
    rows = read_trace(str(REAL_TRACE))["rows"]
    settings = {**SETTINGS, **EXTRA}
    out: dict = {"trace": str(REAL_TRACE.relative_to(RESULTS.parents[1])), "prompt_len": REAL_PROMPT,
                 "gen_len": REAL_GEN, "block_length": REAL_BLOCK, "batches": {}}
    for batch in batches:
        groups = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
        per_setting = {}
        for name, config in settings.items():
            total = 0.0
            for group in groups:
                committed = committed_per_step(group, REAL_GEN // REAL_BLOCK)
                total += generation_cost(dims, batch, REAL_PROMPT, REAL_GEN, len(committed), config, REAL_BLOCK,
                                         logits_tokens=REAL_BLOCK, committed=committed).flops
            per_setting[name] = total / (len(groups) * batch)
        out["batches"][str(batch)] = {
            name: {"flops_per_problem": f, "vs_uncached": f / per_setting["uncached"],
                   "vs_paper": f / per_setting[PAPER]} for name, f in per_setting.items()}
    return out


def markdown(report: dict) -> str:
    meta, part = report["meta"], report["result"]
    lines = [
        "# Adaptive response interval (response_clock=\"tokens\") on CPU: the shipped LLaDA proxy, held-out arith",
        "",
        f"Model: {meta['model']}; problems: the first {part['n']} of {meta['prompts']}; gen {GEN}, block {BLOCK}, "
        f"greedy, threshold {part['threshold']}, batches of {part['batch']} sorted prompts (left padded), stop at "
        f"end-of-text once every row of a batch is done. Machine: {meta['machine']}. Command: `{meta['command']}` "
        f"({meta.get('generation_seconds', meta['wall_seconds']):.0f} s of generation).",
        "",
        "p: exact McNemar against uncached on the same problems (b: right only cached, c: right only uncached). "
        "FLOPs: analytic (dllm_cache.analysis.flops.generation_cost), mean per problem at each problem's prompt "
        "length; *as run*: the step kinds the engine planned for the whole batch (the batch rule: the mean over "
        "rows), checked equal to cache_stats; *batch 1*: each problem's own trace through the same "
        "planner (what a lone row decoding the same tokens would be planned). CPU seconds: shared 2-core machine, "
        "fp32 (noisy; no GPU timing here).",
        "",
        "| setting | accuracy | agreement | b / c | p | FLOPs vs uncached (as run / batch 1) | "
        "FLOPs vs paper default (as run / batch 1) | steps | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        p = r["paired"]
        bc = "-" if p is None else f"{p['cached_right_uncached_wrong']} / {p['cached_wrong_uncached_right']}"
        pv = "-" if p is None else f"{p['p_value']:.3g}"
        lines.append(f"| {r['setting']} | {r['correct']}/{r['n']} ({100 * r['accuracy']:.1f}%) | "
                     f"{100 * r['agreement_with_uncached']:.1f}% | {bc} | {pv} | "
                     f"{r['flops_vs_uncached_as_run']:.3f} / {r['flops_vs_uncached_batch1']:.3f} | "
                     f"{r['flops_vs_paper_as_run']:.2f} / {r['flops_vs_paper_batch1']:.2f} | "
                     f"{r['denoising_steps']} | {r['cpu_seconds']:.0f} |")
    real = report.get("real_rate_flops")
    if real:
        lines += ["", f"## Analytic FLOPs at LLaDA-8B's real rate (LLaDA-8B shape, prompt {real['prompt_len']}, gen "
                  f"{real['gen_len']}, block {real['block_length']}, `{real['trace']}`: ~3.2 tokens/step)", "",
                  "No accuracy here (random weights): what each setting's plan costs at that rate. "
                  "FLOPs vs uncached / vs the paper default, per problem.", "",
                  "| setting | " + " | ".join(f"batch {b}" for b in real["batches"]) + " |",
                  "|---|" + "---|" * len(real["batches"])]
        for name in next(iter(real["batches"].values())):
            cells = [f"{v[name]['vs_uncached']:.3f} / {v[name]['vs_paper']:.2f}" for v in real["batches"].values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=96, help="problems per generate() call")
    ap.add_argument("--extra", action="store_true", help="also Kr 2 steps (frontier)")
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive_interval_cpu")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/adaptive_interval_runs"),
                    help="where each setting's run is kept (reused when its config matches)")
    ap.add_argument("--real-rate-flops", action="store_true",
                    help="only add the analytic FLOPs at LLaDA-8B's real rate to an existing result (no generation)")
    args = ap.parse_args(argv)
    if args.real_rate_flops:
        report = json.loads(result_path(args.out, ".json").read_text())
        report["real_rate_flops"] = real_rate_flops()
        report["meta"]["real_rate_command"] = "PYTHONPATH=. python -m eval.adaptive_interval --real-rate-flops"
        result_path(args.out, ".json").write_text(json.dumps(report, indent=1) + "\n")
        result_path(args.out, ".md").write_text(markdown(report))
        print(markdown(report))
        return 0
    t0 = time.perf_counter()
    result = run(args.n, args.batch, args.extra, args.work_dir)
    report = {
        "meta": {
            **cpu_meta(),
            "command": "PYTHONPATH=. nice -n 10 python -m eval.adaptive_interval "
                       + shlex.join(argv if argv is not None else sys.argv[1:]),
            "wall_seconds": time.perf_counter() - t0,  # of this call; settings found in --work-dir are not re-run
            "generation_seconds": sum(r["cpu_seconds"] for r in result["rows"]),
        },
        "result": result,
    }
    result_path(args.out, ".json").write_text(json.dumps(report, indent=1) + "\n")
    result_path(args.out, ".md").write_text(markdown(report))
    print(markdown(report))
    return 0
