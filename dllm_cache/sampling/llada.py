"""LLaDA's step rule: the current block's rows, CFG, Gumbel sampling in float64, and low-confidence
or random remasking (the loop is sampling/loop.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..engine.patch import cache_branch
from .loop import Run, StepRule
from .prompt import model_inputs
from .unmasking import tokens_per_step


def gumbel_argmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Argmax of Gumbel-perturbed logits in float64 (LLaDA's sampling); greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    noise = torch.rand_like(logits).clamp_min(1e-30)
    return (logits.exp() / (-noise.log()) ** temperature).argmax(dim=-1)


class LLaDARule(StepRule):
    """Samples the block's columns alone (only the current block can be unmasked). The fixed
    schedule spreads each block's masks evenly over its steps: one host sync per block."""

    desc = "llada"

    def __init__(self, *, temperature: float, cfg_scale: float, remasking: str, steps_per_block: int):
        self.temperature, self.cfg_scale, self.remasking = temperature, cfg_scale, remasking
        self.steps_per_block = steps_per_block
        self.counts: torch.Tensor | None = None  # (batch, steps_per_block) on the fixed schedule
        self.counts_max: list[int] | None = None

    def start(self, run: Run) -> None:
        self.prompt_region = torch.zeros_like(run.x, dtype=torch.bool)  # (batch, P + gen): CFG's unconditional input
        self.prompt_region[:, : run.P] = True

    def begin_block(self, run: Run, b: int, lo: int, hi: int) -> None:
        self.counts, self.counts_max = None, None
        if run.dec.fixed:
            self.counts = tokens_per_step((run.x[:, lo:hi] == run.mask_id).sum(dim=1), self.steps_per_block)
            self.counts_max = self.counts.max(dim=0).values.tolist()  # one host sync per block, not per step

    def logits(self, run: Run, lo: int, hi: int) -> torch.Tensor:
        """(batch, hi - lo, vocab), with classifier-free guidance when cfg_scale > 0."""
        logits = run.rows(run.model, model_inputs(run.model, run.x, run.inputs_embeds), run.full_mask, lo, hi)
        if self.cfg_scale > 0:
            uncond = run.x.masked_fill(self.prompt_region, run.mask_id)
            with cache_branch(run.model, "uncond"):
                un_logits = run.rows(run.model, {"input_ids": uncond}, run.full_mask, lo, hi)
            logits = un_logits + (self.cfg_scale + 1) * (logits - un_logits)
        return logits

    def step(self, run: Run, b: int, i: int, lo: int, hi: int, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(run, lo, hi)
        logits[..., run.mask_id] = -math.inf  # never "unmask" into the mask token
        x0 = gumbel_argmax(logits, self.temperature)  # (batch, block_length)
        if self.remasking == "low_confidence":
            p = F.softmax(logits.float(), dim=-1)
            conf = p.gather(-1, x0[..., None]).squeeze(-1)
        else:
            conf = torch.rand(x0.shape, device=x0.device)
        conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
        counts = None if self.counts is None else self.counts[:, i]
        counts_max = None if self.counts_max is None else self.counts_max[i]
        return x0, run.dec.pick(b, i, conf, counts, counts_max)
