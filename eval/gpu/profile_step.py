"""Where the time of one cached denoising step goes: torch.profiler on LLaDA-8B-shaped bf16.

Times a partial step and a response-refresh step for each variant (eager, CUDA graph,
torch.compile + CUDA graph), profiles the partial step, and checks that the variants'
logits after the same step sequence agree.

    PYTHONPATH=. python -m eval.gpu.profile_step --workload gsm8k --batch-size 1 --out eval/results/profile_gsm8k_b1.txt
"""

from __future__ import annotations

import argparse
import time
import types

import torch
from torch.profiler import ProfilerActivity, profile

import dllm_cache
from dllm_cache import CacheConfig
from dllm_cache.bench.factory import build_model, random_prompts
from eval.gpu.timing import cuda_time_ms, emit

WORKLOADS = {"gsm8k": (700, 256), "hotpotqa": (4000, 32)}
VARIANTS = {  # name -> CacheConfig keywords
    "eager": dict(cuda_graphs=False),
    "graph": dict(cuda_graphs=True),
    "compiled+graph": dict(cuda_graphs=True, compile=True),
}


def _steps_of_kind(model, step, prompt_len: int, kind: str, variant: str) -> tuple[float, torch.Tensor, float]:
    """Fill the cache, warm up (eager run, compile, capture), then time steps of one kind.

    Returns (ms per step, logits of the 4th step after the fill, warm-up seconds)."""
    kr = 1 if kind == "response" else 10_000
    dllm_cache.enable_cache(model, CacheConfig(prompt_interval=10_000, response_interval=kr, **VARIANTS[variant]))
    dllm_cache.reset_cache(model, prompt_length=prompt_len)
    step()  # full step fills the cache
    t0 = time.perf_counter()
    for _ in range(3):  # eager warm-up (compiles), capture, first replay
        step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    logits = step().float().clone()
    return cuda_time_ms(step, 10), logits, warm_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="llada-8b")
    p.add_argument("--workload", default="gsm8k", choices=sorted(WORKLOADS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-profile", action="store_true", help="timings only, no profiler tables")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    prompt_len, gen_len = WORKLOADS[args.workload]
    model = build_model(types.SimpleNamespace(model=None, shape=args.shape, seed=0, init_std=0.02), torch.device("cuda"),
                        torch.bfloat16)
    cfg = model.config
    ids = random_prompts(cfg, args.batch_size, prompt_len, 0).cuda()
    x = torch.cat([ids, torch.full((args.batch_size, gen_len), cfg.mask_token_id, device="cuda")], dim=1)
    lines = [f"{args.shape} bf16, batch {args.batch_size}, prompt {prompt_len}, response {gen_len}", ""]

    def step():  # the response rows' logits, as a sampler asks a cached model for them
        return model(x, logits_to_keep=gen_len).logits[:, -gen_len:]

    tables = []
    reference = {}
    with torch.no_grad():
        step()  # first-call warm-up of the uncached model
        lines.append(f"uncached full step: {cuda_time_ms(step, 3):.2f} ms")
        for variant in args.variants:
            for kind in ("response", "partial"):
                ms, logits, warm_s = _steps_of_kind(model, step, prompt_len, kind, variant)
                line = f"{kind} step, {variant}: {ms:.2f} ms (warm-up incl. compile/capture {warm_s:.1f} s)"
                ref = reference.setdefault(kind, (variant, logits))
                if ref[0] != variant:
                    a, b = ref[1], logits
                    line += (f"; vs {ref[0]}: max |dlogit| {(a - b).abs().max().item():.3g}, "
                             f"argmax agree {(a.argmax(-1) == b.argmax(-1)).float().mean().item():.4f}")
                lines.append(line)
                if kind == "partial" and not args.no_profile:
                    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                        step()
                        torch.cuda.synchronize()
                    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
                    kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
                    tables += ["", f"== partial step, {variant}: {kernels} GPU kernels/copies per step", table]
                dllm_cache.disable_cache(model)
    text = "\n".join(lines + tables)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
