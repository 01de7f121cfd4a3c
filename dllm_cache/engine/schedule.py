"""Which feature groups a denoising step refreshes: from the step index and the tokens committed
since the last response refresh (the feature cache; CacheConfig.response_clock), or from the decoded
block (the block KV-cache policies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import CacheConfig


@dataclass(frozen=True)
class StepPlan:
    refresh_prompt: bool
    refresh_response: bool
    rows: tuple[int, int] | None = None  # block policies: the rows [lo, hi) a "block" step recomputes

    @property
    def kind(self) -> str:
        """"full" | "response" (response refreshed, prompt reused) |
        "prompt" (prompt refreshed, response partial) | "partial" (V-verify subset only) |
        "block" (block policies: rows [lo, hi) recomputed against cached K/V)."""
        if self.rows is not None:
            return "block"
        if self.refresh_prompt:
            return "full" if self.refresh_response else "prompt"
        return "response" if self.refresh_response else "partial"


def batch_committed(per_row: Sequence[int]) -> float:
    """The batch rule of the token clock: the mean over rows of the tokens each committed since the last
    response refresh (0 for none). A batch shares one plan; the mean gives a batch about the plan, and
    the FLOPs, one row alone would get at the same rate, where the row that committed most would refresh
    the whole batch whenever any row raced ahead (LLaDA-8B's real-rate trace, batch 16: 1.8x the paper
    default's FLOPs with the maximum, 1.24x with the mean, 1.25x at batch 1). Rows faster than the mean
    are still refreshed at least every Kr steps."""
    return sum(per_row) / len(per_row) if per_row else 0


def response_due(since: int, committed: float, interval: int, config: CacheConfig) -> bool:
    """Is a response refresh due: `since` steps since the last one (counting this step) reached the
    interval, or (response_clock "tokens") `committed`, the tokens a row committed since it
    (`batch_committed`), did. One token per step: committed == since - 1 < since, so the step clock
    decides alone."""
    return since >= interval or (config.counts_tokens and committed >= interval)


def plan_step(step: int, config: CacheConfig, response_interval: int | None = None, since: int | None = None,
              committed: float = 0) -> StepPlan:
    """Step 0 of a generation refreshes everything; then prompt every Kp (never with Kp None),
    response every Kr steps, or, given `since` (steps since the last response refresh, counting this
    one) and `committed` (`batch_committed` of the tokens committed since it), by `response_due`.
    Without them the step clock alone: step % Kr == 0, the refreshes `response_due` gives when the
    rows never commit Kr tokens between two of them."""
    kr = response_interval or config.response_interval
    kp = config.prompt_interval
    prompt = step == 0 if kp is None else step % kp == 0
    if since is None:
        response = step % kr == 0
    else:
        response = step == 0 or response_due(since, committed, kr, config)
    return StepPlan(refresh_prompt=prompt, refresh_response=response)


def feature_plans(config: CacheConfig, steps: int, committed: Sequence[Sequence[int]] | None = None,
                  response_interval: int | None = None) -> list[StepPlan]:
    """The feature cache's plan of every step of one generation, as the engine makes it (CacheState.begin_step
    with the counts our samplers report): `committed[s][r]` tokens row r committed at step s (after its
    forward; steps past the end of `committed` commit none). None: the step clock alone."""
    plans: list[StepPlan] = []
    since, rows = 0, None  # steps since the last response refresh; per row, tokens committed since it
    for step in range(steps):
        since += 1
        plan = plan_step(step, config, response_interval, since, batch_committed(rows or []))
        plans.append(plan)
        if plan.refresh_response:
            since, rows = 0, None
        if committed is not None and step < len(committed):
            counts = list(committed[step])
            rows = counts if rows is None else [a + b for a, b in zip(rows, counts)]
    return plans


def step_kind(step: int, config: CacheConfig) -> str:
    return plan_step(step, config).kind


def block_region(asked: tuple[int, int], seq: int, logit_shift: int, policy: str) -> tuple[int, int]:
    """Rows [lo, hi) a block step recomputes, from the rows whose logits the sampler asks for
    (the decoded block; on a shifted model, Dream, the rows predicting it, so the block's own last
    token comes too): "block-dual" those rows only, "block-prefix" those and everything after."""
    lo, hi = asked
    return (lo, seq) if policy == "block-prefix" else (lo, min(hi + logit_shift, seq))


def plan_block_step(since_refresh: int | None, config: CacheConfig, region: tuple[int, int], step: int = 0,
                    previous: tuple[int, int] | None = None) -> StepPlan:
    """Block policies: which rows step `step` of a generation recomputes against the cached K/V.

    `since_refresh` None marks a block start (the decoded block changed), `region` is this block's
    `block_region`, `previous` the last block's. block_start "full" (Fast-dLLM): a full refresh on
    a block start or every `config.block_refresh` steps, else `region`. block_start "incremental":
    a full refresh on step 0 and every `prompt_interval` steps (None: step 0 only); a block start
    recomputes the last block and the new one together (the hull of `previous` and `region`: the last
    block's K/V were written while some of its tokens were masks), other steps `region`."""
    if config.block_start == "incremental":
        kp = config.prompt_interval
        if step == 0 if kp is None else step % kp == 0:
            return StepPlan(refresh_prompt=True, refresh_response=True)
        if since_refresh is None and previous is not None:
            region = (min(previous[0], region[0]), max(previous[1], region[1]))
        return StepPlan(refresh_prompt=False, refresh_response=False, rows=region)
    every = config.block_refresh
    if since_refresh is None or (every is not None and since_refresh >= every):
        return StepPlan(refresh_prompt=True, refresh_response=True)
    return StepPlan(refresh_prompt=False, refresh_response=False, rows=region)
