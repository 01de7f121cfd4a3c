"""How far the fp8 K/V store (CacheConfig(kv_cache_dtype="fp8"), lossy, opt-in) moves the logits.

Three comparisons per model and dtype, on one denoising trajectory (left-padded prompts, two
tokens unmasked per step; the same inputs for every run):
- refresh every step (Kp=1, Kr=1): nothing is stale, so the exact cache equals the uncached model
  and any deviation is fp8's own (attention reads K/V rounded to fp8, 3 mantissa bits);
- the default schedule (CacheConfig()): fp8 against the exact cache under the same schedule (the
  part fp8 adds to the cache's own staleness), and each against uncached for scale;
- whole generations with our sampler: generated-token agreement of fp8 with the exact cache and
  of both with uncached; on CUDA also that fp8 steps replayed as CUDA graphs give the eager tokens
  (the exit status is non-zero if not).
Logit deviation is over the rows that predict response tokens: max |fp8 - ref|, that relative to
max |ref|, and the fraction of rows whose argmax agrees.

    PYTHONPATH=. python -m eval.kv_fp8 --out $OUT/kv_fp8_deviation.json

Models: tiny random LLaDA and Dream (4 layers, width 128, init std 0.02: the tiny factories' default
std 0.15 makes a chaotic network where bf16 rounding alone moves logits 2.5%) and the shipped
trained model (eval/tiny/model, when present), in float32 and bfloat16. CUDA by default; --device
cpu works too.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.hooks import adapter_for, sampler_of
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from tests.trajectory import logit_deviation, step_logits, trajectory

FP8 = "fp8"


def token_agreement(a: torch.Tensor, b: torch.Tensor, prompt_len: int) -> float:
    return (a[:, prompt_len:] == b[:, prompt_len:]).float().mean().item()


def measure(model, batch: int = 4, prompt_len: int = 40, resp_len: int = 32, steps: int = 12,
            gen_length: int = 32) -> dict[str, Any]:
    """The three comparisons (module docstring) on one model, in its current dtype and device."""
    shift = adapter_for(model).logit_shift
    lo, hi = prompt_len - shift, prompt_len + resp_len - shift  # rows predicting response tokens
    seqs, mask = trajectory(model, batch, prompt_len, resp_len, steps)
    device = next(model.parameters()).device
    seqs, mask = [q.to(device) for q in seqs], mask.to(device)
    every = dict(prompt_interval=1, response_interval=1)
    uncached = step_logits(model, seqs, mask, None, prompt_len)
    exact_every = step_logits(model, seqs, mask, CacheConfig(**every), prompt_len)
    fp8_every = step_logits(model, seqs, mask, CacheConfig(**every, kv_cache_dtype=FP8), prompt_len)
    exact = step_logits(model, seqs, mask, CacheConfig(), prompt_len)
    fp8 = step_logits(model, seqs, mask, CacheConfig(kv_cache_dtype=FP8), prompt_len)
    result = {
        "refresh_every_step": {
            "fp8_vs_uncached": logit_deviation(fp8_every, uncached, lo, hi),
            "exact_vs_uncached": logit_deviation(exact_every, uncached, lo, hi),
        },
        "default_schedule": {
            "fp8_vs_exact_cache": logit_deviation(fp8, exact, lo, hi),
            "fp8_vs_uncached": logit_deviation(fp8, uncached, lo, hi),
            "exact_vs_uncached": logit_deviation(exact, uncached, lo, hi),
        },
    }
    ids = seqs[0][:, :prompt_len]
    gen_mask = mask[:, :prompt_len]
    kw = dict(gen_length=gen_length, steps=gen_length)
    if sampler_of(model) == "llada":
        kw["block_length"] = min(gen_length, 16)
    configs = {"exact": CacheConfig(), "fp8": CacheConfig(kv_cache_dtype=FP8),
               "fp8_eager": CacheConfig(kv_cache_dtype=FP8, cuda_graphs=False)}
    with torch.no_grad():
        ref = generate(model, ids, gen_mask, **kw)
        outs = {}
        for name, config in configs.items():
            with cache_enabled(model, config):
                outs[name] = generate(model, ids, gen_mask, **kw)
    result["generation"] = {
        "fp8_vs_exact_cache": token_agreement(outs["fp8"], outs["exact"], prompt_len),
        "fp8_vs_uncached": token_agreement(outs["fp8"], ref, prompt_len),
        "exact_vs_uncached": token_agreement(outs["exact"], ref, prompt_len),
        "fp8_graphs_equal_eager": bool(torch.equal(outs["fp8"], outs["fp8_eager"])),
    }
    result["shape"] = {"batch": batch, "prompt_len": prompt_len, "resp_len": resp_len, "steps": steps,
                       "gen_length": gen_length, "rows": [lo, hi]}
    return result


def shipped_model():
    """The small trained LLaDA shipped in eval/tiny/model, or None where it is missing."""
    from transformers import AutoModel

    from dllm_cache.shipped import default_model_dir

    try:
        path = default_model_dir()
    except FileNotFoundError:
        return None
    return AutoModel.from_pretrained(path, dtype=torch.float32)


def models() -> dict[str, Any]:
    """Name -> a function building the model in float32 on CPU (None where it is missing)."""
    return {
        "tiny-llada": lambda: tiny_llada(std=0.02, d_model=128, n_layers=4),
        "tiny-dream": lambda: tiny_dream(std=0.02, hidden_size=128, num_hidden_layers=4),
        "shipped-llada": shipped_model,
    }


def summary_line(name: str, dtype: torch.dtype, r: dict[str, Any]) -> str:
    e, d, g = r["refresh_every_step"]["fp8_vs_uncached"], r["default_schedule"]["fp8_vs_exact_cache"], r["generation"]
    return (f"{name:14s} {str(dtype).replace('torch.', ''):9s} refresh every step, fp8 vs uncached: max abs "
            f"{e['max_abs']:.4f} (rel {e['max_rel']:.4f}), argmax {e['argmax_agreement']:.4f} | default schedule, "
            f"fp8 vs exact cache: max abs {d['max_abs']:.4f} (rel {d['max_rel']:.4f}), argmax "
            f"{d['argmax_agreement']:.4f} | generated tokens fp8 = exact {g['fp8_vs_exact_cache']:.3f}, "
            f"exact = uncached {g['exact_vs_uncached']:.3f}, fp8 = uncached {g['fp8_vs_uncached']:.3f}; "
            f"fp8 graphs == eager {g['fp8_graphs_equal_eager']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--models", nargs="+", default=list(models()), choices=list(models()))
    p.add_argument("--out", type=Path, default=Path("eval/results/kv_fp8_deviation.json"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        for dtype_name in args.dtypes:
            base = models()[name]()  # built afresh per dtype: .to() casts in place, so a float32 row
            if base is None:  # after a bfloat16 one would otherwise run on bf16-rounded weights
                print(f"{name}: not found, skipped")
                break
            dtype = getattr(torch, dtype_name)
            model = base.to(device, dtype).eval()
            r = measure(model)
            rows.append({"model": name, "dtype": dtype_name, **r})
            print(summary_line(name, dtype, r), flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "command": "python -m eval.kv_fp8 " + " ".join(sys.argv[1:] if argv is None
                                                                                           else argv),
        "wall_s": time.perf_counter() - t0, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["generation"]["fp8_graphs_equal_eager"] for r in rows)
    print(f"wrote {args.out}; fp8 CUDA graphs == eager: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
