"""Synthetic denoising trajectories (the inputs a sampler would feed), the logits a model gives along
one, uncached or cached, and how far two such runs deviate: for exactness checks and deviation
measurements. The tests and the lab's fp8 study (eval/kv_fp8) share this one definition; it lives
with the tests because the product's tests may not import the lab (eval/)."""

import torch

from dllm_cache import CacheConfig, cache_enabled, reset_cache


def trajectory(model, batch=3, prompt_len=10, resp_len=16, steps=6, seed=0, padded=True, high=200):
    """Sequences a sampler would feed: prompt + masked response, unmasking 2 tokens per step.

    Row r (r>0 when padded) is left padded by 2r tokens, so rows have different prompt lengths.
    Token ids are drawn from [0, high), below the tiny models' special ids.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randint(0, high, (batch, prompt_len + resp_len), generator=g)
    x[:, prompt_len:] = cfg.mask_token_id
    mask = torch.ones_like(x)
    if padded:
        for r in range(1, batch):
            mask[r, : 2 * r] = 0
            x[r, : 2 * r] = cfg.pad_token_id
    seqs = []
    for s in range(steps):
        seqs.append(x.clone())
        lo = prompt_len + 2 * s
        x[:, lo : lo + 2] = torch.randint(0, high, (batch, 2), generator=g)
    return seqs, mask


def step_logits(model, seqs: list[torch.Tensor], mask: torch.Tensor, config: CacheConfig | None,
                prompt_len: int) -> list[torch.Tensor]:
    """Float32 logits of every step along `seqs`, uncached (config None) or cached with `config`."""
    def run() -> list[torch.Tensor]:
        # A copy for every step: with CUDA graphs a cached step's logits live in a buffer the next step
        # overwrites, and .float() of float32 logits is no copy.
        return [model(s, attention_mask=mask).logits.to(torch.float32, copy=True) for s in seqs]

    with torch.no_grad():
        if config is None:
            return run()
        with cache_enabled(model, config):
            reset_cache(model, prompt_length=prompt_len)
            return run()


def logit_deviation(out: list[torch.Tensor], ref: list[torch.Tensor], lo: int, hi: int) -> dict[str, float]:
    """Rows [lo, hi) of each step's (batch, seq, vocab) logits: max abs deviation, that relative to
    the reference's max |logit|, and argmax agreement (fraction of rows)."""
    o = torch.stack([t[:, lo:hi] for t in out])
    r = torch.stack([t[:, lo:hi] for t in ref])
    max_abs = (o - r).abs().max().item()
    scale = r.abs().max().item()
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale else float("nan"),
            "argmax_agreement": (o.argmax(-1) == r.argmax(-1)).float().mean().item()}
