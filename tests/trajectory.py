"""Synthetic denoising trajectories: the inputs a sampler would feed, for exactness checks and
deviation measurements (tests and eval.kv_fp8 share one definition)."""

import torch


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
