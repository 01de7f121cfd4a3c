"""LLaDA2.0-mini-shaped speed bench: the official loop uncached, the exact block cache, and the block cache plus
the in-block feature cache, in generated tokens/s.

The model has LLaDA2.0-mini's real config numbers (dllm_cache.models.tiny.llada2_mini_config: 20 layers,
hidden 2048, 16 / 4 heads of 128, 256 experts, 8 routed + 1 shared, first layer dense, vocab 157184) with
random bf16 weights made directly on the GPU (compute does not depend on weight values). Random weights are
never confident, so decoding follows a replayed schedule at the LLaDA2.0 report's 2.55 tokens per forward
(threshold 0.95): every block of 32 takes 12 or 13 steps, each unmasking a fixed count
(dllm_cache.ReplaySchedule, as eval/real_rate replays traces for LLaDA). The MoE layers run as grouped
matmuls (eval/llada2/grouped_moe.py) in every row alike.

    python eval/llada2/bench.py                            # GPU: writes eval/results/llada2-mini-bench.{json,md}
    python eval/llada2/bench.py --device cpu --tiny        # seconds, on a tiny model: checks that it all runs

Rows, each timed over whole generate() calls (prompt of --prompt-len tokens, a multiple of the block):
- reference: the official loop, every step a forward over the sequence up to the current block's end;
- block cache: committed blocks' K/V kept (exact), each step computes the current block only
  (CacheConfig(policy="block-dual"));
- block + feature cache: the same plus the feature cache inside the block (CacheConfig() defaults:
  response_interval 8, transfer_ratio 0.25, frontier selection).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dllm_cache  # noqa: E402
from dllm_cache import CacheConfig, ReplaySchedule, generate  # noqa: E402
from dllm_cache.bench.factory import random_init_  # noqa: E402
from dllm_cache.models.llada2 import LLaDA2MoeModelLM  # noqa: E402
from dllm_cache.models.tiny import llada2_mini_config, tiny_llada2  # noqa: E402
from eval.llada2.grouped_moe import PATH, GroupedMoeBlock, swap_in_grouped  # noqa: E402

ROWS = {
    "reference (no cache)": None,
    "block cache (exact)": CacheConfig(policy="block-dual"),
    "block + feature cache": CacheConfig(),
}
PUBLISHED = (
    "Published figures, other hardware and software (not comparable as such): SGLang serves LLaDA2.0-flash (100B) at "
    "935 tokens/s on 8x H20 (TP8); dInfer reports 535 tokens/s for LLaDA2.0; LLaDA2.1-flash reaches 892 tokens/s with "
    "FP8 (LLaDA2.1 report). Ours: one GPU, the 16B mini, bf16, eager PyTorch."
)


def build(args: argparse.Namespace, device: torch.device) -> LLaDA2MoeModelLM:
    if args.tiny:
        model = tiny_llada2(seed=0).to(device).eval()
        grouped = tiny_llada2(seed=0).to(device).eval()
        swap_in_grouped(grouped, copy_weights=True)
        ids = torch.randint(0, 250, (2, 24), device=device)
        diff = (model(ids, block_length=8).logits - grouped(ids, block_length=8).logits).abs().max().item()
        if diff > 1e-4:
            raise SystemExit(f"grouped MoE differs from the per-expert MoE: max |logit diff| {diff:.2e}")
        print(f"grouped MoE == per-expert MoE on the tiny model (max |logit diff| {diff:.1e}, {PATH[GroupedMoeBlock.used]})")
        return grouped
    config = llada2_mini_config()
    with torch.device("meta"):  # shapes only; the weights are made once, on the GPU, in bf16
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LLaDA2MoeModelLM(config)
            swap_in_grouped(model, copy_weights=False)
        finally:
            torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    random_init_(model, args.init_std, seed=0)
    for name, buf in model.named_buffers():
        if name.endswith("expert_bias"):
            buf.zero_()
    return model.to(torch.bfloat16).eval()


def schedule_rows(batch: int, gen_length: int, block: int, rate: float) -> tuple[list[dict], int]:
    """Trace rows at `rate` tokens per step: round(gen / rate) steps spread over the blocks, each block's tokens
    spread evenly over its steps; the same for every row."""
    blocks = gen_length // block
    total = max(blocks, round(gen_length / rate))
    per_block = [total // blocks + (b < total % blocks) for b in range(blocks)]
    row = {"blocks": [[block // n + (i < block % n) for i in range(n)] for n in per_block], "stopped": False}
    return [row] * batch, total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_row(model, config, ids, gen_length, block, rows, repeats, device) -> float:
    """Median seconds of one generate() call with `config` (None: uncached)."""
    dllm_cache.disable_cache(model)
    if config is not None:
        dllm_cache.enable_cache(model, config)
    times = []
    for _ in range(repeats):
        schedule = ReplaySchedule(rows, gen_length, block)
        _sync(device)
        t0 = time.perf_counter()
        generate(model, ids, gen_length=gen_length, block_length=block, schedule=schedule, eos_id=[])
        _sync(device)
        times.append(time.perf_counter() - t0)
    dllm_cache.disable_cache(model)
    return sorted(times)[len(times) // 2]


def write(args: argparse.Namespace, gpu: str, init_s: float, results: list[dict]) -> None:
    """The JSON and Markdown results so far (rewritten after every timed row, so a cut-off run keeps its rows)."""
    command = "python eval/llada2/bench.py " + " ".join(sys.argv[1:])
    meta = {"gpu": gpu, "device": args.device, "command": command.strip(), "torch": torch.__version__,
            "model": "tiny_llada2" if args.tiny else "LLaDA2.0-mini shape (random bf16)",
            "prompt_len": args.prompt_len, "block_length": args.block, "rate": args.rate, "repeats": args.repeats,
            "moe": PATH.get(GroupedMoeBlock.used, "per-expert"), "init_seconds": init_s,
            "feature_cache": {k: getattr(ROWS["block + feature cache"], k) for k in
                              ("response_interval", "transfer_ratio", "selection")}}
    stem = Path(args.out) if args.out else (Path("/tmp/llada2-tiny-bench") if args.tiny else
                                            ROOT / "eval" / "results" / "llada2-mini-bench")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    lines = [f"# LLaDA 2.x bench: {meta['model']}", "", f"GPU: {gpu}; torch {torch.__version__}; MoE: {meta['moe']}",
             f"Command: `{meta['command']}`", "",
             f"Prompt {args.prompt_len} tokens, block {args.block}, replayed at {args.rate} tokens per forward "
             f"(LLaDA2.0 report, threshold 0.95); feature cache {meta['feature_cache']}; median of {args.repeats}.", "",
             "| gen | batch | row | steps | seconds | tokens/s | vs reference |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['gen_length']} | {r['batch']} | {r['row']} | {r['steps']} | {r['seconds']:.3f} | "
                     f"{r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |")
    lines += ["", PUBLISHED, ""]
    stem.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke run) instead of the LLaDA2.0-mini shape")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--gens", type=int, nargs="+", default=None, help="generation lengths (default 256 1024; --tiny: 64 128)")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--rate", type=float, default=2.55, help="tokens per forward to replay (LLaDA2.0 report, threshold 0.95)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens, a multiple of --block (default 128; --tiny: 32)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--out", default=None, help="output stem (default eval/results/llada2-mini-bench, or /tmp/... with --tiny)")
    args = p.parse_args()
    args.gens = args.gens or ([64, 128] if args.tiny else [256, 1024])
    args.prompt_len = args.prompt_len or (32 if args.tiny else 128)
    if args.prompt_len % args.block:
        raise SystemExit(f"--prompt-len ({args.prompt_len}) must be a multiple of --block ({args.block}).")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a smoke run.")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(args, device)
    _sync(device)
    init_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    special = {model.config.mask_token_id, model.config.eos_token_id, model.config.pad_token_id}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"model ready in {init_s:.1f} s on {gpu}", flush=True)

    # Warm-up: one short generation per row kind (allocator, kernels, grouped-mm path).
    warm_ids = torch.randint(0, vocab - 3, (1, args.prompt_len), device=device)
    for config in ROWS.values():
        time_row(model, config, warm_ids, 2 * args.block, args.block, schedule_rows(1, 2 * args.block, args.block,
                 args.rate)[0], 1, device)

    results = []
    for gen in args.gens:
        for batch in args.batches:
            ids = torch.randint(0, vocab - 3, (batch, args.prompt_len), device=device)
            ids[torch.isin(ids, torch.tensor(sorted(special), device=device))] = 0
            rows, steps = schedule_rows(batch, gen, args.block, args.rate)
            base = None
            for name, config in ROWS.items():
                seconds = time_row(model, config, ids, gen, args.block, rows, args.repeats, device)
                base = base or seconds
                r = {"row": name, "batch": batch, "gen_length": gen, "steps": steps, "tokens_per_step": gen / steps,
                     "seconds": seconds, "tokens_per_s": batch * gen / seconds, "speedup": base / seconds}
                results.append(r)
                print(f"gen {gen:5d} batch {batch:3d} {name:24s} {seconds:8.3f} s  {r['tokens_per_s']:9.1f} tok/s  "
                      f"{r['speedup']:.2f}x", flush=True)
                write(args, gpu, init_s, results)

    write(args, gpu, init_s, results)
    print("wrote the .json and .md")
    if not math.isfinite(sum(r["seconds"] for r in results)):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()
