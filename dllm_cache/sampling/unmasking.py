"""Which masked tokens a denoising step unmasks, and when a generation may stop early.

The samplers score every masked token of the current window (a semi-autoregressive block, or the
whole response) with a confidence, -inf where nothing is to decide, and pick by one rule:

* fixed count: the `count` most confident per row (LLaDA spreads a block's masks evenly over
  its steps, `tokens_per_step`; Dream follows its timestep schedule);
* threshold (Fast-dLLM's parallel decoding): every token whose confidence exceeds it;
* factor (Fast-dLLM's factor rule): the n most confident, n the largest with
  (n + 1) * (1 - c_n) < f, c_n the n-th highest confidence. (n + 1)(1 - c_n) never decreases with
  n, so the accepted tokens are always the most confident ones.

Threshold and factor always take the most confident token of a row that has one, so every step
makes progress. The early stop ends a row once its answer is complete: an end token decoded,
nothing masked before it, and nothing but end or padding tokens after it; the masks after it
are filled with the end token. Everything here is tensor arithmetic (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .trace import DecodeTrace, ReplaySchedule, committed_at


def tokens_per_step(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Spread each row's masked count (batch,) over `steps` as evenly as possible -> (batch, steps)."""
    base = masked // steps
    extra = masked % steps
    out = base[:, None].expand(-1, steps).clone()
    out += (torch.arange(steps, device=masked.device)[None, :] < extra[:, None]).long()
    return out


def topk_rows(confidence: torch.Tensor, counts: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Boolean (batch, n): each row's `counts[row]` highest-confidence positions, no Python loop over rows.

    `kmax` (an upper bound on counts, known on the host) avoids a device->host sync."""
    kmax = int(counts.max()) if kmax is None else kmax
    kmax = min(kmax, confidence.shape[-1])
    picked = torch.zeros_like(confidence, dtype=torch.bool)
    if kmax <= 0:
        return picked
    idx = confidence.topk(kmax, dim=-1).indices  # (batch, kmax)
    keep = torch.arange(kmax, device=confidence.device)[None, :] < counts[:, None]
    picked.scatter_(1, idx, keep)
    return picked


def _at_least_one(confidence: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """`picked` plus the most confident candidate of every row that has one (finite confidence)."""
    has = (confidence > -torch.inf).any(dim=1).long()
    return picked | topk_rows(confidence, has, 1)


def threshold_pick(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean (batch, n): candidates with confidence > threshold, and at least the best one per row.

    confidence: (batch, n), -inf where there is nothing to decide."""
    return _at_least_one(confidence, confidence > threshold)


def factor_pick(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """Boolean (batch, n): the n most confident candidates per row, n the largest with
    (n + 1) * (1 - c_n) < factor (c_n the n-th highest confidence), and at least one."""
    ordered, order = confidence.sort(dim=-1, descending=True)  # (batch, n), -inf last
    n = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device, dtype=ordered.dtype)
    accepted = (n + 1) * (1 - ordered) < factor  # -inf: never
    count = accepted.long().cumprod(dim=-1).sum(dim=-1)  # the accepted prefix (the rule is monotone)
    keep = torch.arange(confidence.shape[-1], device=confidence.device)[None, :] < count[:, None]
    picked = torch.zeros_like(accepted).scatter_(1, order, keep)
    return _at_least_one(confidence, picked)


def check_parallel(threshold: float | None, factor: float | None) -> None:
    """Clear errors for the parallel-decoding options of a sampler."""
    if threshold is not None and factor is not None:
        raise ValueError("Pass threshold= or factor=, not both: they are two rules for how many tokens a step unmasks.")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a confidence in [0, 1] (Fast-dLLM uses 0.9), got {threshold!r}.")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0):
        raise ValueError(f"factor must be a number > 0 (Fast-dLLM's factor rule; e.g. 1.0), got {factor!r}.")


class EarlyStop:
    """Ends rows whose answer is complete (see the module docstring).

    end_ids: tokens that end an answer (the first is the fill token); pad_ids: tokens also allowed
    after it (padding)."""

    def __init__(self, end_ids: Sequence[int], pad_ids: Sequence[int], device: torch.device):
        if not end_ids:
            raise ValueError("stop_at_eos needs an end token: pass eos_id=... or set config.eos_token_id.")
        self.fill = int(end_ids[0])
        self.end = torch.tensor(sorted({int(i) for i in end_ids}), device=device)
        self.allowed = torch.tensor(sorted({int(i) for i in (*end_ids, *pad_ids)}), device=device)

    @classmethod
    def for_model(cls, config, eos_id: int | Sequence[int] | None, device: torch.device) -> EarlyStop:
        """End tokens `eos_id` (default config.eos_token_id); padding: config.pad_token_id."""
        ids = eos_id if eos_id is not None else getattr(config, "eos_token_id", None)
        end = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        pad = getattr(config, "pad_token_id", None)
        return cls(end, [] if pad is None else [pad], device)

    def apply(self, response: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Fill the finished rows of `response` (batch, G) in place; returns them, (batch,) bool."""
        G = response.shape[1]
        is_end = torch.isin(response, self.end)
        masked = response == mask_id
        first = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), G)  # (batch,), G: none
        pos = torch.arange(G, device=response.device)[None, :]
        before, after = pos < first[:, None], pos > first[:, None]
        complete = ~(masked & before).any(dim=1)
        tail_ok = (~after | masked | torch.isin(response, self.allowed)).all(dim=1)
        done = (first < G) & complete & tail_ok
        response.masked_fill_(done[:, None] & after & masked, self.fill)
        return done


class Unmasker:
    """One generation's decoding bookkeeping, shared by the samplers: the rule of each step, the
    replayed schedule, trace recording, the early stop, and the one host sync per step that the
    threshold / factor rules (is the block full?) and the early stop (is every row done?) need.
    The fixed schedule and a replay need none per step.

    threshold / factor: parallel decoding; schedule: a trace to replay (ReplaySchedule); stop: an
    EarlyStop or None; trace: a DecodeTrace to record into, or None; fill: the token that fills
    the rest of a row whose replayed trace ended early."""

    def __init__(self, *, threshold: float | None, factor: float | None, schedule: ReplaySchedule | None,
                 stop: EarlyStop | None, trace: DecodeTrace | None, mask_id: int, fill: int,
                 num_blocks: int, block_length: int, gen_length: int, batch: int, device: torch.device):
        check_parallel(threshold, factor)
        if schedule is not None and (threshold is not None or factor is not None):
            raise ValueError("schedule= replays recorded step counts; it cannot be combined with threshold= or factor=.")
        if schedule is not None:
            if not isinstance(schedule, ReplaySchedule):
                raise TypeError(f"schedule must be a dllm_cache.sampling.trace.ReplaySchedule, got {type(schedule).__name__}.")
            if (schedule.gen_length, schedule.block_length) != (gen_length, block_length):
                raise ValueError(
                    f"the replayed trace was recorded with gen_length {schedule.gen_length} and block_length "
                    f"{schedule.block_length}; this generation has {gen_length} and {block_length}. Replay it with "
                    "the same lengths."
                )
            schedule.prepare(batch, device)
        self.threshold, self.factor, self.schedule = threshold, factor, schedule
        self.stop, self.trace, self.mask_id, self.fill = stop, trace, mask_id, fill
        self.dynamic = threshold is not None or factor is not None
        self.fixed = not self.dynamic and schedule is None
        self.stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        self.committed: list[int] | None = None  # the last step's tokens per row, where known on the host
        if trace is not None:
            trace.begin(num_blocks)

    def budget(self, block: int, fixed_steps: int, window: int) -> int:
        """Most steps block `block` may take: the fixed schedule's, the replayed trace's, or (threshold,
        factor) the window's size, since every step unmasks at least one token per row."""
        if self.schedule is not None:
            return self.schedule.block_steps[block]
        return window if self.dynamic else fixed_steps

    def pick(self, block: int, step: int, confidence: torch.Tensor, counts: torch.Tensor | None = None,
             kmax: int | None = None) -> torch.Tensor:
        """Boolean (batch, n) of the tokens to unmask; `counts` / `kmax` for the fixed schedule."""
        if self.threshold is not None:
            return threshold_pick(confidence, self.threshold)
        if self.factor is not None:
            return factor_pick(confidence, self.factor)
        if self.schedule is not None:
            return topk_rows(confidence, self.schedule.counts[block, :, step], self.schedule.kmax[block][step])
        return topk_rows(confidence, counts, kmax)

    def after_step(self, block: int, window: torch.Tensor, response: torch.Tensor, masked: torch.Tensor,
                   picked: torch.Tensor, step: int | None = None) -> tuple[bool, bool]:
        """After step `step` of block `block` updated `window` (the block's columns of x) and `response`
        (x's generated columns), given the window's masks before the step and what it unmasked: record it,
        stop finished rows, and return (window full, every row done). Reads the device at most once.

        Sets `committed`: the tokens each row unmasked by the rule this step, as host ints, where they come
        free (the threshold / factor rules read them with their one sync; a replay has them on the host),
        else None (the fixed schedule: the cache's response clock then counts steps)."""
        picked_rows = picked.sum(dim=1) if self.trace is not None or self.dynamic else None  # (batch,)
        if self.trace is not None:
            self.trace.record(block, picked_rows, masked.any(dim=1))
        if self.stop is not None:
            self.stopped |= self.stop.apply(response, self.mask_id)
        self.committed = None
        if self.schedule is not None and step is not None:
            self.committed = committed_at(self.schedule.rows, block, step)
        if not (self.dynamic or self.stop is not None):
            return False, False
        read = torch.stack([(window == self.mask_id).any(), (response == self.mask_id).any()]).long()
        if self.dynamic:  # the counts ride on the one sync the rule needs anyway
            read = torch.cat([read, picked_rows.long()])
        read = read.tolist()
        if self.dynamic:
            self.committed = read[2:]
        return not read[0], not read[1]

    def after_block(self, block: int, response: torch.Tensor) -> bool:
        """Replay: fill the rows whose trace ended in this block; True when every row has ended."""
        if self.schedule is None:
            return False
        ends = self.schedule.ends[block]  # (batch,)
        response.masked_fill_(ends[:, None] & (response == self.mask_id), self.fill)
        self.stopped |= ends
        return self.schedule.finished_after(block)

    def end(self) -> None:
        if self.trace is not None:
            self.trace.end(self.stopped)
