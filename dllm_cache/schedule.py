"""Which feature groups a denoising step refreshes, from the step index alone."""

from __future__ import annotations

from dataclasses import dataclass

from .config import CacheConfig


@dataclass(frozen=True)
class StepPlan:
    refresh_prompt: bool
    refresh_response: bool

    @property
    def kind(self) -> str:
        """"full" | "response" (response refreshed, prompt reused) |
        "prompt" (prompt refreshed, response partial) | "partial" (V-verify subset only)."""
        if self.refresh_prompt:
            return "full" if self.refresh_response else "prompt"
        return "response" if self.refresh_response else "partial"


def plan_step(step: int, config: CacheConfig, response_interval: int | None = None) -> StepPlan:
    """Step 0 of a generation refreshes everything; then prompt every Kp (never with Kp None),
    response every Kr."""
    kr = response_interval or config.response_interval
    kp = config.prompt_interval
    return StepPlan(refresh_prompt=step == 0 if kp is None else step % kp == 0, refresh_response=step % kr == 0)


def step_kind(step: int, config: CacheConfig) -> str:
    return plan_step(step, config).kind
