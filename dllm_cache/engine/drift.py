"""Drift-triggered response refresh (CacheConfig.response_drift_threshold).

A fixed Kr refreshes the response on a clock, whether its features moved or not. But every
partial step already measures how far they moved: V-verify compares each response token's fresh
Value vector with the cached one. The mean of 1 - cos over the response rows and the layers that
ran V-verify is the step's drift; when it reaches the threshold the next step refreshes every
response token, never sooner than `response_min_interval` steps after the last refresh and always
by `response_interval`. No extra forward: the drift is a by-product of the drift test.

The decision needs the drift on the host before the next step is planned: one device-to-host read
per step. Cached steps of such a config run eagerly (enable_cache turns CUDA graphs off): a captured
step would still need that read between replays, which stalls the launch queue graphs keep full.

To choose a threshold, look at the drift: every step that measured one is kept in a `DriftTrace`
(cache_stats()["drift"]), with its steps since the last response refresh. A drift-triggered config
keeps it at no extra cost (the drift is on the host anyway); any other config measures and keeps it
inside `dllm_cache.measure_drift(model)` only, where it costs that read per step and CUDA graphs.
`eval/tiny/drift_profile.py` turns such traces into percentiles and thresholds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from ..config import CacheConfig
from .schedule import StepPlan, plan_step, response_due


def layer_drift(sim: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(V_new, V_cached) over batch and response tokens, a 0-d float32 tensor.

    sim: (batch, R) `select.value_similarity` of the fresh and cached Values, the one V-verify
    ranks tokens by (computed once for both)."""
    return (1.0 - sim).mean()


def step_drift(layer_drifts: list[torch.Tensor]) -> float:
    """The step's drift: mean over the layers that measured one (0.0 if none did, e.g. a response
    refresh). One host sync."""
    return float(torch.stack(layer_drifts).mean()) if layer_drifts else 0.0


def plan_drift_step(
    step: int, since_refresh: int, drift: float, config: CacheConfig, longest: int, committed: float = 0
) -> tuple[StepPlan, bool]:
    """(plan, drift_triggered) for step `step` of a generation.

    since_refresh: steps since the last response refresh; drift: the previous step's `step_drift`;
    longest: the branch's longest interval (response_interval, or cfg_interval for CFG's
    unconditional pass); committed: the tokens a row committed since the last response refresh
    (`schedule.batch_committed`; response_clock "tokens": the longest interval also counts them,
    `schedule.response_due`). Prompt refreshes keep their Kp clock; step 0 refreshes everything."""
    prompt = plan_step(step, config, longest).refresh_prompt
    if step == 0:
        return StepPlan(refresh_prompt=True, refresh_response=True), False
    due = response_due(since_refresh, committed, longest, config)
    triggered = (not due and since_refresh >= config.response_min_interval
                 and drift >= config.response_drift_threshold)
    return StepPlan(refresh_prompt=prompt, refresh_response=due or triggered), triggered


# Entries a DriftTrace keeps per branch (the latest; ~256 generations of 256 steps): bounded memory
# for a long-running cached model whose stats are never reset.
TRACE_LIMIT = 1 << 16


@dataclass
class DriftTrace:
    """The drift of every step of one branch that measured one: partial and prompt-refresh steps
    (a response refresh measures none). Flat lists, one entry per such step, oldest first; the latest
    `limit` are kept and `dropped` counts the older ones."""

    limit: int = TRACE_LIMIT
    step: deque = field(default_factory=deque)  # the step's index in its generation (0 = its first step)
    since_refresh: deque = field(default_factory=deque)  # steps since the last response refresh: 1 = the next
    drift: deque = field(default_factory=deque)  # `step_drift`: mean 1 - cos over response rows and layers
    dropped: int = 0

    def add(self, step: int, since_refresh: int, drift: float) -> None:
        if len(self.drift) == self.limit:
            for column in (self.step, self.since_refresh, self.drift):
                column.popleft()
            self.dropped += 1
        self.step.append(step)
        self.since_refresh.append(since_refresh)
        self.drift.append(drift)

    def as_dict(self) -> dict:
        return {"step": list(self.step), "since_refresh": list(self.since_refresh), "drift": list(self.drift),
                "dropped": self.dropped}
