"""Where the time of one cached denoising step goes: torch.profiler on LLaDA-8B-shaped bf16,
one partial step eager and one replayed as a CUDA graph, plus one uncached step.

    PYTHONPATH=. python -m eval.profile_step --workload gsm8k --batch-size 1 --out eval/results/profile_gsm8k_b1.txt
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import dllm_cache
from dllm_cache import CacheConfig
from dllm_cache.bench import build_model, random_prompts

WORKLOADS = {"gsm8k": (700, 256), "hotpotqa": (4000, 32)}


def _cuda_ms(fn, n: int = 5) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="llada-8b")
    p.add_argument("--workload", default="gsm8k", choices=sorted(WORKLOADS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    prompt_len, gen_len = WORKLOADS[args.workload]
    model = build_model(types.SimpleNamespace(model=None, shape=args.shape, seed=0, init_std=0.02), torch.device("cuda"),
                        torch.bfloat16)
    cfg = model.config
    ids = random_prompts(cfg, args.batch_size, prompt_len, 0).cuda()
    x = torch.cat([ids, torch.full((args.batch_size, gen_len), cfg.mask_token_id, device="cuda")], dim=1)
    lines = [f"{args.shape} bf16, batch {args.batch_size}, prompt {prompt_len}, response {gen_len}", ""]

    def step():
        return model(x).logits

    with torch.no_grad():
        uncached_ms = _cuda_ms(step, 3)
        lines.append(f"uncached full step: {uncached_ms:.2f} ms")
        for graphs in (False, True):
            dllm_cache.enable_cache(model, CacheConfig(prompt_interval=10_000, response_interval=10_000,
                                                       cuda_graphs=graphs))
            dllm_cache.reset_cache(model, prompt_length=prompt_len)
            step()  # full step fills the cache
            for _ in range(3):  # warm-up, capture
                step()
            ms = _cuda_ms(step, 10)
            label = "partial step, CUDA graph" if graphs else "partial step, eager"
            lines.append(f"{label}: {ms:.2f} ms")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
            kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
            lines += ["", f"== {label}: {kernels} GPU kernels/copies per step", table]
            dllm_cache.disable_cache(model)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
