"""Dream's step rule: shifted logits (row j predicts token j + 1), entropy / maskgit_plus /
topk_margin / origin confidences, top_p before top_k, alg_temp, and the eps timestep schedule
(the loop is sampling/loop.py)."""

from __future__ import annotations

import math

import torch

from .loop import Run, StepRule
from .prompt import model_inputs
from .unmasking import topk_rows


def _filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """top_p, then top_k, as Dream's sample_tokens (the reverse order, transformers', keeps a different
    set when both are given: tests/test_reference_samplers.py compares with Dream's order)."""
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return logits


def _dream_sample(logits: torch.Tensor, alg: str, temperature: float, top_p, top_k) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, tokens), each (...), for logits (..., vocab): sampled (or greedy) tokens and the
    alg's confidence in them (probability for maskgit_plus, top-2 margin, negative entropy)."""
    shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1])
    if temperature > 0:
        logits = logits / temperature
    probs = _filter_logits(logits.float(), top_p, top_k).softmax(-1)
    if temperature > 0:
        tokens = torch.multinomial(probs, 1).squeeze(-1)
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        conf, tokens = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (probs * probs.clamp_min(1e-10).log()).sum(-1)
    return conf.reshape(shape), tokens.reshape(shape)


def shifted_logits(rows, model, inputs: dict, mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """(batch, hi - lo, vocab): the logits that predict tokens lo .. hi-1, by `rows` (the row-logits
    function). Dream's logits are shifted: row j predicts token j + 1, and row 0 stands in for token 0 itself."""
    if lo > 0:
        return rows(model, inputs, mask, lo - 1, hi - 1)
    logits = rows(model, inputs, mask, 0, max(hi - 1, 1))
    return torch.cat([logits[:, :1], logits[:, : hi - 1]], dim=1)


def _dream_count_bound(window: int, steps: int, eps: float) -> list[int]:
    """Host-side upper bound on each step's count of the fixed schedule, so top-k needs no sync:
    a step unmasks int(n * (1 - s / t)) of the n <= window masks left (float32 on the device: the
    +1 covers its rounding), the last step all of them."""
    ts = [1 + (eps - 1) * i / steps for i in range(steps + 1)]
    return [window if i == steps - 1 else min(window, int(window * (1 - ts[i + 1] / ts[i])) + 1) for i in range(steps)]


def _alg_temp_pick(conf: torch.Tensor, counts: torch.Tensor, alg_temp: float) -> torch.Tensor:
    """Dream's alg_temp: draw each row's `counts` tokens from softmax(confidence / alg_temp)."""
    probs = (conf / alg_temp).softmax(-1)
    picked = torch.zeros_like(conf, dtype=torch.bool)
    for row in range(conf.shape[0]):  # multinomial draws differ per row in count
        k = int(counts[row])
        if k:
            picked[row, torch.multinomial(probs[row], k)] = True
    return picked


class DreamRule(StepRule):
    """Samples the window's tokens from the shifted rows; the fixed schedule unmasks int(n (1 - s/t))
    per step (t, s consecutive timesteps from 1 to eps), ranked by the alg's confidence; threshold,
    factor and replay rank by probability (maskgit_plus)."""

    desc = "dream"

    def __init__(self, *, alg: str, alg_temp: float | None, temperature: float, top_p: float | None,
                 top_k: int | None, eps: float, steps_per_block: int, window: int):
        self.alg, self.alg_temp, self.temperature, self.top_p, self.top_k = alg, alg_temp, temperature, top_p, top_k
        self.eps, self.steps_per_block = eps, steps_per_block
        self.bound = _dream_count_bound(window, steps_per_block, eps)

    def start(self, run: Run) -> None:
        self.timesteps = torch.linspace(1, self.eps, self.steps_per_block + 1, device=run.x.device)

    def step(self, run: Run, b: int, i: int, lo: int, hi: int, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = model_inputs(run.model, run.x, run.inputs_embeds)
        logits = shifted_logits(run.rows, run.model, inputs, run.full_mask, lo, hi)  # (batch, W, vocab)
        logits[..., run.mask_id] = -math.inf
        fixed, last = run.dec.fixed, i == self.steps_per_block - 1
        if fixed:
            t, s = self.timesteps[i], self.timesteps[i + 1]
        if self.alg == "origin":
            p_transfer = 1 - s / t if not last else 1.0
            picked = masked & (torch.rand(masked.shape, device=run.x.device) < p_transfer)
            tokens = _dream_sample(logits, "maskgit_plus", self.temperature, self.top_p, self.top_k)[1]
            return tokens, picked
        conf, tokens = _dream_sample(logits, self.alg if fixed else "maskgit_plus", self.temperature, self.top_p, self.top_k)
        conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
        if not fixed:
            return tokens, run.dec.pick(b, i, conf)
        n_masked = masked.sum(dim=1)
        counts = (n_masked.float() * (1 - s / t)).long() if not last else n_masked
        picked = _alg_temp_pick(conf, counts, self.alg_temp) if self.alg_temp else topk_rows(conf, counts, self.bound[i])
        return tokens, picked
