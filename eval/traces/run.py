"""Decoding traces on the trained proxy models: how many tokens each denoising step unmasks under
parallel decoding, per cache policy, with the accuracy of the same setting.

For each (cache setting, decoding rule) the proxy model generates on the held-out prompts with
`generate(..., trace=DecodeTrace())`; the per-row, per-block step counts go to
eval/results/traces_<name>_<task>_<rule>_<cache>[_eos].json.gz with the accuracy, the agreement with the
uncached one-token-per-step run (also run, first) and the mean tokens per step. `dllm-cache bench
--trace FILE` replays such a file on the LLaDA-8B / Dream-7B shapes.

    PYTHONPATH=. python -m eval.traces --model eval/tiny/model --name llada --task arith --n 500 \
        --rule threshold:0.9 factor:1.0 --cache none default block-dual --stop-at-eos --device cuda

Rules: `fixed` (the sampler's schedule), `threshold:T`, `factor:F`. Caches: `none`, `paper` (the
published policy: Kp 100, Kr 8, ratio 0.25, V-verify selection; the original dLLM-Cache's setting),
`default` (CacheConfig(): the same intervals with the "frontier" selection; until 2026-11-26 it was
the paper's, and the traces recorded then were renamed `_paper`), `kr2` (response_interval 2),
`frontier-only`, `block-prefix`, `block-dual`. The
tasks' generation settings are eval/tiny/evaluate.py's (arith: gen 256, block 8; multihop: gen
32, block 32; Dream without blocks), overridable with --gen L,S,B.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eval.tiny import tasks
from eval.tiny.evaluate import GEN_SETTINGS, load_model, parse_gen, sampler_settings

RESULTS = Path(__file__).resolve().parents[1] / "results"
TASKS = {"arith": "arith", "multihop": "hotpot"}  # report name -> task family of eval/tiny
BATCH = {"arith": 256, "hotpot": 64}


def cache_config(name: str):
    """CacheConfig (or None) for a --cache name; CUDA graphs off so every row runs eagerly."""
    from dllm_cache import CacheConfig

    configs = {
        "none": None,
        "paper": CacheConfig(selection="paper", cuda_graphs=False),
        "default": CacheConfig(cuda_graphs=False),
        "kr2": CacheConfig(response_interval=2, cuda_graphs=False),
        "frontier-only": CacheConfig(selection="frontier", frontier_only=True, cuda_graphs=False),
        "block-prefix": CacheConfig(policy="block-prefix", cuda_graphs=False),
        "block-dual": CacheConfig(policy="block-dual", cuda_graphs=False),
    }
    if name not in configs:
        raise SystemExit(f"unknown --cache {name!r}; expected one of {sorted(configs)}")
    return configs[name]


def parse_rule(text: str) -> dict:
    """'fixed' | 'threshold:T' | 'factor:F' -> sampler keyword arguments."""
    if text == "fixed":
        return {}
    kind, _, value = text.partition(":")
    if kind not in ("threshold", "factor") or not value:
        raise SystemExit(f"--rule {text!r}: expected fixed, threshold:T or factor:F")
    return {kind: float(value)}


@torch.no_grad()
def run_setting(model, tok, family: str, examples: list[dict], settings: dict, sampler: dict, *, device: str,
                batch_size: int, progress: bool = False) -> dict:
    """Generate on `examples` recording traces; rows come back in example order with their text,
    answer key and correctness."""
    prompts = [tasks.prompt_and_target(family, ex)[0] for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows: list[dict | None] = [None] * len(prompts)
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    t0 = time.perf_counter()
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            _generate_batch(model, tok, family, examples, [prompts[i] for i in idx], idx, settings, sampler, device,
                            rows)
    finally:
        handle.remove()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    done = [r for r in rows if r is not None]
    return {"rows": done, "seconds": time.perf_counter() - t0, "forwards": len(forwards),
            "accuracy": sum(r["correct"] for r in done) / max(1, len(done))}


def _generate_batch(model, tok, family: str, examples: list[dict], prompts: list[str], idx: list[int],
                    settings: dict, sampler: dict, device: str, rows: list) -> None:
    """One left-padded batch with its trace; fills rows[i] for the examples `idx`."""
    from dllm_cache.sampling.generate import generate
    from dllm_cache.sampling.trace import DecodeTrace

    enc = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    trace = DecodeTrace()
    out = generate(model, ids, mask, temperature=0.0, trace=trace, **sampler_settings(model, settings), **sampler)
    for row, (i, rec) in enumerate(zip(idx, trace.rows())):
        text = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True)
        rows[i] = {**rec, "example": i, "correct": tasks.is_correct(family, text, examples[i]["answer"]),
                   "answer_key": tasks.answer_key(family, text), "text": text}


def _name(rule: str, cache: str, stop_at_eos: bool) -> str:
    return f"{rule.replace(':', '')}_{cache}" + ("_eos" if stop_at_eos else "")


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="exported proxy model folder (config, weights, tokenizer)")
    p.add_argument("--name", required=True, help="model key in the file names, e.g. llada or dream")
    p.add_argument("--task", choices=tuple(TASKS), default="arith")
    p.add_argument("--n", type=int, default=tasks.N_TEST, help="held-out examples")
    p.add_argument("--rule", nargs="+", default=["threshold:0.9"], help="fixed | threshold:T | factor:F")
    p.add_argument("--cache", nargs="+", default=["none"],
                   help="none | paper | default | kr2 | frontier-only | block-prefix | block-dual")
    p.add_argument("--stop-at-eos", action="store_true", help="stop each answer at its end token (early stop)")
    p.add_argument("--gen", default=None, metavar="L,S,B", help="gen_length,steps,block_length (default: the task's)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (arith) / 64 (multihop)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from dllm_cache import cache_enabled
    from dllm_cache.sampling.trace import summary, write_trace

    family = TASKS[args.task]
    settings = dict(GEN_SETTINGS[family])
    if args.gen:
        settings.update(parse_gen(args.gen, "gen"))
    rules = {r: parse_rule(r) for r in args.rule}
    caches = {c: cache_config(c) for c in args.cache}
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = load_model(args.model, args.device, dtype)
    settings = sampler_settings(model, settings)  # Dream: no blocks
    examples = tasks.test_examples(family, args.n)
    batch = args.batch_size or BATCH[family]
    run = dict(device=args.device, batch_size=batch, progress=not args.no_progress)
    base = run_setting(model, tok, family, examples, settings, {}, **run)  # uncached, one token per step
    base_keys = [r["answer_key"] for r in base["rows"]]
    written = []
    for cache_name, cfg in caches.items():
        for rule, sampler in rules.items():
            if args.stop_at_eos:
                sampler = {**sampler, "stop_at_eos": True}
            with cache_enabled(model, cfg) if cfg is not None else contextlib.nullcontext():
                res = run_setting(model, tok, family, examples, settings, sampler, **run)
            agree = sum(r["answer_key"] == k for r, k in zip(res["rows"], base_keys)) / max(1, len(base_keys))
            meta = {
                "model": args.model, "name": args.name, "task": args.task, "n": len(examples),
                "gen_length": settings["gen_length"], "steps": settings["steps"],
                "block_length": settings.get("block_length"), "rule": rule, **sampler,
                "cache": cache_name, "cache_config": None if cfg is None else asdict(cfg),
                "accuracy": res["accuracy"], "uncached_accuracy": base["accuracy"],
                "agreement_with_uncached": agree, "seconds": round(res["seconds"], 3),
                "uncached_seconds": round(base["seconds"], 3), "forwards": res["forwards"],
                "uncached_forwards": base["forwards"], "device": args.device,
                "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                "torch": torch.__version__,
                "command": "PYTHONPATH=. python -m eval.traces " + " ".join(argv if argv is not None else sys.argv[1:]),
            }
            name = _name(rule, cache_name, args.stop_at_eos)
            path = write_trace(args.out_dir / f"traces_{args.name}_{args.task}_{name}.json.gz", res["rows"], meta)
            s = summary(res["rows"])
            print(f"{args.task} {cache_name:13s} {rule:15s} acc {100 * res['accuracy']:5.1f}% (uncached "
                  f"{100 * base['accuracy']:5.1f}%) agree {100 * agree:5.1f}% steps/row {s['mean_steps']:6.1f} "
                  f"tokens/step {s['tokens_per_step']:5.2f} stopped {100 * s['stopped_fraction']:4.0f}% -> {path}")
            written.append(path)
    return written


if __name__ == "__main__":
    main()
