"""Memory side of `dllm-cache bench`: the logits rows our samplers ask a cached model for (they
set the LM head's FLOPs and the logits' memory), each run's estimated peak, and the pre-flight
check that stops a run whose batch cannot fit before anything is built."""

from __future__ import annotations

from typing import Any

from dllm_cache.analysis import memory
from dllm_cache.analysis.flops import ModelDims, sampler_logit_rows


def family_of_config(config: Any) -> str:
    return "dream" if "dream" in str(getattr(config, "model_type", "")).lower() else "llada"


def sampler_rows(family: str, prompt_len: int, gen_len: int, block_length: int | None) -> tuple[int, int]:
    """Rows [lo, hi) whose logits our sampler asks a cached model for (dllm_cache.sampling.generate): those
    predicting the current block (the first here: every block has as many rows), i.e. LLaDA the
    block, Dream one row earlier (its logits are shifted by one); no block: the whole response."""
    return sampler_logit_rows(prompt_len, 0, block_length or gen_len, int(family == "dream"))


def head_rows(family: str, prompt_len: int, gen_len: int, block_length: int | None, tied: bool) -> dict[str, int]:
    """Rows per batch row through the LM head on each step kind of a cached run driven by our
    samplers: the asked rows on prompt refreshes, their response rows otherwise (prompt rows come
    from the last refresh). A model without a separate head module (tied) computes every row."""
    if tied:
        return dict.fromkeys(("full", "prompt", "response", "partial", "block"), prompt_len + gen_len)
    lo, hi = sampler_rows(family, prompt_len, gen_len, block_length)
    refresh, cached = hi - lo, hi - max(lo, prompt_len)
    # block steps (block KV-cache policies) compute every asked row
    return {"full": refresh, "prompt": refresh, "response": cached, "partial": cached, "block": refresh}


def run_peak(config: Any, batch: int, prompt_len: int, gen_len: int, block_length: int | None, dtype_bytes: int,
             cached: bool, deltas: bool = True, kv_cache_dtype: str | None = None) -> dict[str, int]:
    """Estimated whole-process peak of one bench run (memory.generation_peak_bytes), by term;
    deltas False: a block KV-cache policy (K/V only); kv_cache_dtype: the cache's K/V store."""
    dims = ModelDims.from_config(config)
    family = family_of_config(config)
    tied = bool(getattr(config, "weight_tying", False))
    lo, hi = sampler_rows(family, prompt_len, gen_len, block_length)
    scored = block_length or gen_len  # rows the sampler scores (softmax) per step
    return memory.generation_peak_bytes(
        dims, batch, prompt_len, gen_len, dtype_bytes, cached=cached,
        logit_rows=hi - lo if cached and not tied else None, sampler_rows=scored,
        prompt_logit_rows=max(min(hi, prompt_len) - lo, 0), tied=tied, deltas=deltas, kv_cache_dtype=kv_cache_dtype,
        block_length=block_length,  # a block-diffusion model's cache holds one block's features
    )


def preflight(config: Any, batches: list[int], prompt_len: int, gen_len: int, block_length: int | None,
              dtype_bytes: int, device: Any, kv_cache_dtype: str | None = None) -> None:
    """Stop (SystemExit) before any work when a requested batch cannot fit on `device`, uncached
    or cached, naming the largest batch that would. No-op where free memory is unknown (CPU)."""
    free = memory.device_free_bytes(device)
    if free is None or not memory.check_enabled():
        return

    def peak(batch: int) -> int:
        return max(run_peak(config, batch, prompt_len, gen_len, block_length, dtype_bytes, cached,
                            kv_cache_dtype=kv_cache_dtype)["total"] for cached in (False, True))

    too_big = [b for b in batches if peak(b) > free]
    if too_big:
        worst = max(too_big)
        terms = {c: run_peak(config, worst, prompt_len, gen_len, block_length, dtype_bytes, c,
                             kv_cache_dtype=kv_cache_dtype) for c in (False, True)}
        detail = "; ".join(
            f"{'cached' if c else 'uncached'} {memory.gib(t['total'])} (weights {memory.gib(t['weights'])}, cache "
            f"{memory.gib(t['cache'])}, temporaries {memory.gib(t['step'] + t['graphs'] + t['sampler'])})"
            for c, t in terms.items()
        )
        fits = memory.largest_batch(peak, free)
        raise SystemExit(
            f"[bench] batch size {too_big} cannot fit with prompt {prompt_len} + gen {gen_len} on {device}: batch "
            f"{worst} needs about {detail}, but {memory.gib(free)} is free. "
            + (f"The largest batch that fits is {fits}. " if fits else
               "Not even batch 1 fits: use a shorter --prompt-len. ")
            + f"(Estimate from the shapes; set {memory.CHECK_ENV}=0 to run anyway.)"
        )
