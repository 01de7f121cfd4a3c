"""How far the in-block feature cache moves LLaDA 2.x's predictions from the exact block cache.

Tiny random llada2_moe models (dllm_cache.models.tiny.tiny_llada2, fp32 CPU; no trained LLaDA 2.x weights
exist here, so these numbers show the mechanism, not a trained model's accuracy). Two measurements:
- teacher-forced: the exact block cache decodes (a replayed schedule at 2.55 tokens per forward, the
  LLaDA2.0 report's rate); at every step the feature-cached forward sees the same sequence, and we compare
  its block logits with the exact ones on the still-masked positions (the ones the sampler reads): top-1
  agreement and the relative L2 error of the logits, averaged over steps;
- free-running: whole generations with the official sampler (greedy, threshold 0.95), cached vs uncached:
  the share of generated tokens that are equal.
The exact block cache itself equals the uncached model (tests/test_llada2.py), so "exact" is the reference.

    python eval/llada2/deviation.py          # prints a table; recorded in eval/results/llada2_deviation.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dllm_cache import CacheConfig, cache_enabled, generate  # noqa: E402
from dllm_cache.engine.block_causal import BlockCausalCache  # noqa: E402
from dllm_cache.hooks import adapter_for  # noqa: E402
from dllm_cache.models.tiny import tiny_llada2  # noqa: E402
from eval.llada2.bench import schedule_rows  # noqa: E402

CONFIGS = {
    "default (Kr 8, ratio 0.25, frontier)": CacheConfig(),
    "Kr 4": CacheConfig(response_interval=4),
    "Kr 2": CacheConfig(response_interval=2),
    "ratio 0.5": CacheConfig(transfer_ratio=0.5),
    "paper selection (V-verify only)": CacheConfig(selection="paper"),
    "ratio 0 (reuse only)": CacheConfig(transfer_ratio=0.0),
}


def teacher_forced(model, config: CacheConfig, ids: torch.Tensor, gen: int, block: int, rate: float) -> tuple[float, float]:
    """(top-1 agreement on masked positions, mean relative L2 logit error) over the steps of one generation."""
    batch, P = ids.shape
    total = P + gen
    mask_id = model.config.mask_token_id
    x = torch.full((batch, total), mask_id, dtype=torch.long)
    x[:, :P] = ids
    positions = torch.arange(total).expand(batch, total)
    adapter = adapter_for(model)
    exact = BlockCausalCache(model, adapter, CacheConfig(policy="block-dual"), batch=batch, total=total,
                             block_length=block, positions=positions, key_mask=None)
    cached = BlockCausalCache(model, adapter, config, batch=batch, total=total, block_length=block,
                              positions=positions, key_mask=None)
    rows, _ = schedule_rows(batch, gen, block, rate)
    agree, err, n = 0.0, 0.0, 0
    for b, counts in enumerate(rows[0]["blocks"]):
        lo, hi = P + b * block, P + (b + 1) * block
        for k in counts:
            ref = exact.block_logits(x, lo, hi).float()
            got = cached.block_logits(x, lo, hi).float()
            masked = x[:, lo:hi] == mask_id
            agree += ((ref.argmax(-1) == got.argmax(-1)) & masked).sum().item() / masked.sum().item()
            err += ((got - ref)[masked].norm() / ref[masked].norm()).item()  # the rows the sampler reads
            n += 1
            conf = ref.softmax(-1).amax(-1).masked_fill(~masked, -1)
            pick = conf.topk(k, dim=-1).indices  # the exact run's k most confident masked tokens
            x[:, lo:hi].scatter_(1, pick, ref.argmax(-1).gather(1, pick))
    return agree / n, err / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--rate", type=float, default=2.55)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"tiny_llada2, fp32 CPU, prompt 32, gen {args.gen}, block {args.block}, batch 2, seeds 0..{args.seeds - 1}")
    print("| config | top-1 agreement (teacher-forced) | relative logit error | free-running equal tokens |")
    print("|---|---|---|---|")
    for name, config in CONFIGS.items():
        a = e = f = 0.0
        for seed in range(args.seeds):
            model = tiny_llada2(seed=seed)
            torch.manual_seed(100 + seed)
            ids = torch.randint(0, 250, (2, 32))
            ai, ei = teacher_forced(model, config, ids, args.gen, args.block, args.rate)
            plain = generate(model, ids, gen_length=args.gen, block_length=args.block, eos_id=[])
            with cache_enabled(model, config):
                cached = generate(model, ids, gen_length=args.gen, block_length=args.block, eos_id=[])
            a, e, f = a + ai, e + ei, f + (cached[:, 32:] == plain[:, 32:]).float().mean().item()
        s = args.seeds
        print(f"| {name} | {a / s:.3f} | {e / s:.3f} | {f / s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
