"""Plain reference versions of LLaDA 2.x decoding, written from the algorithms (not from our sampler).

* `llada2_reference`: the official `LLaDA2MoeModelLM.generate` (inclusionAI's modelling code): ONE prompt,
  the whole window [0, end of the current block) recomputed every step with the 4-D additive block mask
  (log of a block lower-triangular matrix) and position ids 0..end-1, a per-step budget spread over
  `steps`, threshold with the minimal top-k fallback, the optional in-block eos early stop and the
  after-block eos stop. Returns the generated tokens up to and including the first end token (or
  gen_length tokens), as upstream does.
* `joint_threshold_reference`: LLaDA2.1's token editing as SGLang's JointThreshold step defines it, one
  prompt, same windowed forwards.

Slow and literal on purpose (whole-window forwards, Python loops) so they can serve as an oracle for
dllm_cache.sampling.llada2, which computes only the current block through the cache. Where ours differs on
purpose, a flag selects ours: `exclude_mask` (the mask token's logit is -inf before sampling; upstream may
"unmask" into [MASK]) and the in-block eos check over generated columns only (upstream also looks at the
prompt; the tests' prompts hold no end token, where both agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _window_logits(model, x: torch.Tensor, end: int, block_length: int) -> torch.Tensor:
    n = end // block_length
    tri = torch.tril(torch.ones(n, n))
    mask = tri.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)[None, None].log()
    pos = torch.arange(end)[None]
    return model(x[:, :end], attention_mask=mask, position_ids=pos).logits


def llada2_reference(model, prompt: torch.Tensor, *, gen_length: int, block_length: int = 32, steps: int = 32,
                     threshold: float | None = 0.95, minimal_topk: int = 1, eos_early_stop: bool = False,
                     eos_id: int | None = None, mask_id: int, exclude_mask: bool = True) -> torch.Tensor:
    """prompt (P,) -> generated tokens (<= gen_length,), greedy (temperature 0)."""
    steps = min(steps, gen_length // minimal_topk)
    P = prompt.shape[0]
    num_blocks = (P + gen_length + block_length - 1) // block_length
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long)
    x[0, :P] = prompt
    base, extra = divmod(block_length, steps)
    schedule = [base + (i < extra) for i in range(steps)]
    for b in range(P // block_length, num_blocks):
        end = (b + 1) * block_length
        for step in range(steps):
            active = x[0, end - block_length:end] == mask_id
            if active.sum() == 0:
                break
            logits = _window_logits(model, x, end, block_length)[0, -block_length:].float()
            if exclude_mask:
                logits[:, mask_id] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            x0 = probs.argmax(-1)
            p = probs.gather(-1, x0[:, None])[:, 0]
            conf = torch.where(active, p, torch.tensor(-float("inf")))
            n = schedule[step]
            transfer = torch.zeros(block_length, dtype=torch.bool)
            high = conf > threshold if threshold is not None else torch.zeros_like(transfer)
            if threshold is not None and int(high.sum()) >= n:
                transfer = high
            else:
                idx = torch.topk(conf, k=min(n, int(active.sum()))).indices
                transfer[idx] = True
            x[0, end - block_length:end][transfer] = x0[transfer]
            if eos_early_stop and eos_id is not None and bool((x0[transfer] == eos_id).any()):
                gen = x[0, P:]
                eos_at = (gen == eos_id).nonzero()
                if len(eos_at) and bool((gen[: int(eos_at[0])] != mask_id).all()):
                    return gen[: int(eos_at[0]) + 1]
        if eos_id is not None and bool((x[0, P:end] == eos_id).any()):
            break
    gen = x[0, P:P + gen_length]
    eos_at = (gen == eos_id).nonzero() if eos_id is not None else []
    return gen[: int(eos_at[0]) + 1] if len(eos_at) else gen


def joint_threshold_reference(model, prompt: torch.Tensor, *, gen_length: int, block_length: int, threshold: float,
                              edit_threshold: float, max_post_edit_steps: int, mask_id: int,
                              eos_id: int | None = None) -> torch.Tensor:
    """LLaDA2.1 token editing, one prompt (P,) -> generated tokens (gen_length,), no eos truncation."""
    P = prompt.shape[0]
    num_blocks = (P + gen_length + block_length - 1) // block_length
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long)
    x[0, :P] = prompt
    for b in range(P // block_length, num_blocks):
        lo, end = b * block_length, (b + 1) * block_length
        prompt_cols = torch.arange(lo, end) < P
        post = 0
        for _ in range(block_length + max_post_edit_steps + 1):
            cur = x[0, lo:end]
            logits = _window_logits(model, x, end, block_length)[0, -block_length:].float()
            logits[:, mask_id] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            x0 = probs.argmax(-1)
            p = probs.gather(-1, x0[:, None])[:, 0]
            masked = cur == mask_id
            m2t = torch.zeros_like(masked)
            if masked.any():
                conf = torch.where(masked, p, torch.tensor(-float("inf")))
                m2t = conf > threshold
                if not m2t.any():
                    m2t[int(conf.argmax())] = True
            else:
                post += 1
                if post > max_post_edit_steps:
                    break
            edits = (p > edit_threshold) & (cur != x0) & ~masked & ~prompt_cols
            transfer = m2t | edits
            if not transfer.any():
                break
            x[0, lo:end] = torch.where(transfer, x0, cur)
        if eos_id is not None and bool((x[0, P:end] == eos_id).any()):
            break
    return x[0, P:P + gen_length]
