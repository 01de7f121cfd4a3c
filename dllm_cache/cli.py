"""`dllm-cache generate | bench | eval`.

generate: the main job. Runs the same prompts uncached and cached on one model and prints
          wall time, analytic FLOPs, speedup and how far the cached output agrees.
bench:    speed/FLOPs comparison across shapes, batches and cache settings (dllm_cache.bench).
eval:     lm-eval with the `dllm_cache` model registered (needs a source checkout: eval/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "eval" / "tiny" / "model"
DEFAULT_PROMPTS = REPO / "eval" / "data" / "arith_synth" / "test.jsonl"


def _load(model_arg: str | None, device: str, dtype: torch.dtype):
    """(model, tokenizer or None, description). Default: the shipped trained model, else a tiny random LLaDA."""
    from transformers import AutoModel, AutoTokenizer

    import dllm_cache  # noqa: F401  (registers the model classes)

    path = Path(model_arg) if model_arg else DEFAULT_MODEL
    if model_arg == "tiny-random" or (model_arg is None and not (path / "config.json").exists()):
        from dllm_cache.models.tiny import tiny_llada

        return tiny_llada().to(device=device, dtype=dtype), None, "tiny random LLaDA (no trained model found)"
    if not (path / "config.json").exists():
        raise SystemExit(f"--model {path}: no config.json there. Pass a local model directory or 'tiny-random'.")
    model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # a model dir without tokenizer still benchmarks on token ids
        tok = None
    return model, tok, str(path)


def _source_checkout_on_path() -> bool:
    """eval/ (task helpers, lm-eval glue) is not installed; reach it from a source checkout."""
    if not (REPO / "eval" / "__init__.py").exists():
        return False
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return True


def _prompts(tok, args, vocab: int, special: set[int]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Left-padded prompt ids and mask, with the examples they came from (for answer checks)."""
    if tok is None:
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, vocab, (args.batch_size, 24), generator=g)
        for s in special:
            ids[ids == s] = 0
        return ids, torch.ones_like(ids), []
    if args.prompt:
        examples = [{"question": p} for p in args.prompt]
    else:
        lines = DEFAULT_PROMPTS.read_text().splitlines()[: args.batch_size]
        examples = [json.loads(line) for line in lines]
    if _source_checkout_on_path():
        from eval.tiny.tasks import arith_prompt

        texts = [arith_prompt(e["question"]) for e in examples]
    else:
        texts = [e["question"] for e in examples]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"], examples


def _timed(fn, device: str) -> tuple[torch.Tensor, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def cmd_generate(args: argparse.Namespace) -> int:
    import dllm_cache
    from dllm_cache.flops import ModelDims, generation_flops
    from dllm_cache.generate import generate

    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tok, where = _load(args.model, args.device, dtype)
    cfg = model.config
    special = {i for i in (cfg.mask_token_id, cfg.pad_token_id, getattr(cfg, "eos_token_id", None)) if i is not None}
    ids, mask, examples = _prompts(tok, args, cfg.vocab_size, special)
    ids, mask = ids.to(args.device), mask.to(args.device)
    cache_cfg = dllm_cache.CacheConfig(args.prompt_interval, args.response_interval, args.transfer_ratio,
                                       compile=args.compile)
    kw = dict(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length, progress=True)

    print(f"model: {where}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype}, {args.device})")
    print(f"batch {ids.shape[0]} x prompt {ids.shape[1]} tokens, gen {args.gen_length}, steps {args.steps}, "
          f"block {args.block_length}; cache {cache_cfg}")
    generate(model, ids[:1], mask[:1], gen_length=8, steps=8, block_length=8)  # warm-up
    ref, t_ref = _timed(lambda: generate(model, ids, mask, **kw), args.device)
    with dllm_cache.cache_enabled(model, cache_cfg):
        out, t_cache = _timed(lambda: generate(model, ids, mask, **kw), args.device)
        stats = dllm_cache.cache_stats(model)

    P = ids.shape[1]
    dims = ModelDims.from_config(cfg)
    f_ref = generation_flops(dims, ids.shape[0], P, args.gen_length, args.steps, None)
    f_cache = generation_flops(dims, ids.shape[0], P, args.gen_length, args.steps, cache_cfg)
    agree = (out[:, P:] == ref[:, P:]).float().mean().item()
    print()
    print(f"{'':10s}{'time (s)':>10s}{'TFLOPs':>12s}")
    print(f"{'uncached':10s}{t_ref:10.2f}{f_ref / 1e12:12.4f}")
    print(f"{'cached':10s}{t_cache:10.2f}{f_cache / 1e12:12.4f}")
    print(f"speedup: {t_ref / t_cache:.2f}x wall clock, {f_ref / f_cache:.2f}x FLOPs "
          f"(response tokens recomputed on partial steps: {stats['recompute_fraction']:.0%})")
    print(f"agreement: {agree:.1%} of generated tokens identical to the uncached run")
    if args.compile:
        print("note: the cached time includes compiling the cached layer (once per layout); --compile pays on long runs")
    if tok is not None and _source_checkout_on_path():
        from eval.tiny.tasks import is_correct

        n_ok = {"uncached": 0, "cached": 0}
        for i in range(ids.shape[0]):
            a = tok.decode(ref[i, P:], skip_special_tokens=True)
            b = tok.decode(out[i, P:], skip_special_tokens=True)
            gold = examples[i].get("answer") if i < len(examples) else None
            if gold is not None:
                n_ok["uncached"] += is_correct("arith", a, gold)
                n_ok["cached"] += is_correct("arith", b, gold)
            if i < args.show:
                print(f"\n[{i}] {examples[i]['question']}\n  uncached: {a}\n  cached:   {b}")
        if examples and "answer" in examples[0]:
            print(f"\ncorrect answers: uncached {n_ok['uncached']}/{ids.shape[0]}, cached {n_ok['cached']}/{ids.shape[0]}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from dllm_cache.bench import main

    return main(argv)


def cmd_eval(argv: list[str]) -> int:
    if not _source_checkout_on_path():
        raise SystemExit("`dllm-cache eval` needs a source checkout of dllm-cache (its eval/ folder); install with pip -e.")
    from eval.lm_eval_launch import main

    return main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dllm-cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="cached vs uncached generation on one model")
    g.add_argument("--model", default=None, help="local model dir, or 'tiny-random' (default: the shipped eval/tiny/model)")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable); default: held-out arithmetic problems")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--gen-length", type=int, default=64)
    g.add_argument("--steps", type=int, default=64)
    g.add_argument("--block-length", type=int, default=32)
    g.add_argument("--prompt-interval", type=int, default=100)
    g.add_argument("--response-interval", type=int, default=8)
    g.add_argument("--transfer-ratio", type=float, default=0.25)
    g.add_argument("--compile", action="store_true", help="CacheConfig(compile=True): torch.compile the cached layer")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--show", type=int, default=3, help="print this many prompts with both outputs")
    g.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="speed/FLOPs benchmark (see `dllm-cache bench --help`)", add_help=False)
    sub.add_parser("eval", help="lm-eval with the dllm_cache model (see `dllm-cache eval --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    if argv and argv[0] == "eval":
        return cmd_eval(argv[1:])
    args = build_parser().parse_args(argv)
    return cmd_generate(args)


if __name__ == "__main__":
    sys.exit(main())
