"""Speed beside accuracy: per-task wall time, tokens/s, forward passes by step kind, fraction of
response tokens recomputed and analytic FLOPs, for the `dllm_cache` lm-eval model.

A SpeedMeter hooks the model's forward (one pre- and one post-hook, nothing else changes): every
forward inside `meter.track(task, ...)` is counted, classified by the cache counter it moved
(full / prompt / response / partial; an uncached forward is "full") and charged its FLOPs by
`dllm_cache.analysis.flops.step_flops` at its real shape (rows, prompt width, response length). So the
numbers hold for any sampler schedule (parallel decoding, CFG's second pass), not only the
nominal one. A block step (block KV-cache policies) is charged the response rows it recomputed
(from the cache's counter: Dream's one prompt row in its first block is left out) and logits on
those rows, a close upper bound on the rows the sampler asked for.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dllm_cache.analysis.flops import STEP_KINDS, ModelDims, step_flops

# cache_stats counter -> step kind (names of dllm_cache.analysis.flops)
_KIND_COUNTERS = {"full_steps": "full", "prompt_refresh_steps": "prompt",
                  "response_refresh_steps": "response", "partial_steps": "partial", "block_steps": "block"}
_TOKEN_COUNTERS = ("tokens_recomputed", "tokens_total")


@dataclass
class TaskSpeed:
    """Totals of one task (one lm-eval task name) on one process."""

    requests: int = 0
    wall_s: float = 0.0  # device-synchronised time spent on this task's batches
    gen_tokens: int = 0  # generated positions: requests x gen_length
    forwards: int = 0
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0))
    tokens_recomputed: int = 0
    tokens_total: int = 0
    flops: int = 0

    def merge(self, other: TaskSpeed) -> None:
        """Add another process's totals (data parallel: ranks run concurrently, so wall = max)."""
        self.requests += other.requests
        self.wall_s = max(self.wall_s, other.wall_s)
        self.gen_tokens += other.gen_tokens
        self.forwards += other.forwards
        for kind, n in other.steps.items():
            self.steps[kind] = self.steps.get(kind, 0) + n
        self.tokens_recomputed += other.tokens_recomputed
        self.tokens_total += other.tokens_total
        self.flops += other.flops

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: totals plus the per-second and per-request rates."""
        out = asdict(self)
        out["gen_tokens_per_s"] = self.gen_tokens / self.wall_s if self.wall_s > 0 and self.gen_tokens else None
        out["recompute_fraction"] = self.tokens_recomputed / self.tokens_total if self.tokens_total else None
        out["flops_per_request"] = self.flops / self.requests if self.requests else None
        return out


def table_rows(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers shown in lm-eval's results table for one task (metric -> value)."""
    rows = {
        "wall_s": summary["wall_s"],
        "gen_tok_per_s": summary["gen_tokens_per_s"],
        "forwards": summary["forwards"],
        **{f"steps_{kind}": summary["steps"].get(kind, 0) for kind in STEP_KINDS},
        "recompute_frac": summary["recompute_fraction"],
        "gflops_per_req": summary["flops_per_request"] / 1e9 if summary["flops_per_request"] is not None else None,
    }
    return {k: (float(v) if isinstance(v, float) else v) for k, v in rows.items() if v is not None}


class SpeedMeter:
    """Counts and times the forwards of `model` inside `track()`, per task.

    `cache_counters()` returns the model's cache_stats counters (empty when the cache is off);
    `sync()` waits for the device so that times are real.
    """

    def __init__(self, model: nn.Module, cache_counters: Callable[[], dict[str, float]],
                 sync: Callable[[], None], lm_head_all_rows: bool = False) -> None:
        self.dims = ModelDims.from_config(model.config)
        self.tasks: dict[str, TaskSpeed] = {}
        self._counters = cache_counters
        self._sync = sync
        self._head_all_rows = lm_head_all_rows  # weight-tied LLaDA: the cache cannot skip prompt logits
        self._active: TaskSpeed | None = None
        self._response_len = 0
        self._ratio = 0.0
        self._before: dict[str, float] = {}
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def reset(self) -> None:
        self.tasks = {}

    @contextlib.contextmanager
    def track(self, task: str, *, requests: int, response_len: int, gen_tokens: int = 0,
              transfer_ratio: float = 0.0) -> Iterator[TaskSpeed]:
        """Charge the forwards and the time inside the block to `task`. `response_len` is the
        number of trailing positions being generated (scored) in each forward."""
        record = self.tasks.setdefault(str(task), TaskSpeed())
        self._active, self._response_len, self._ratio = record, int(response_len), float(transfer_ratio)
        self._sync()
        start = time.perf_counter()
        try:
            yield record
        finally:
            self._sync()
            record.wall_s += time.perf_counter() - start
            record.requests += requests
            record.gen_tokens += gen_tokens
            self._active = None

    def _pre(self, module: nn.Module, args: tuple) -> None:
        if self._active is not None:
            self._before = self._counters()

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        record = self._active
        if record is None or not args or not isinstance(args[0], torch.Tensor):
            return
        rows, seq = args[0].shape[:2]
        after = self._counters()
        moved = [kind for key, kind in _KIND_COUNTERS.items() if after.get(key, 0) > self._before.get(key, 0)]
        kind = moved[0] if moved else "full"  # no cache counter moved: an uncached forward
        response = min(self._response_len, seq)
        record.forwards += 1
        record.steps[kind] = record.steps.get(kind, 0) + 1
        for key in _TOKEN_COUNTERS:
            setattr(record, key, getattr(record, key) + int(after.get(key, 0) - self._before.get(key, 0)))
        logits_tokens = seq if self._head_all_rows else None
        block_rows = None
        if kind == "block":  # block policies: the response rows the step recomputed (per row and layer)
            moved_tokens = after.get("tokens_recomputed", 0) - self._before.get("tokens_recomputed", 0)
            block_rows = int(moved_tokens) // max(1, rows * self.dims.n_layers)
            logits_tokens = logits_tokens or block_rows
        record.flops += step_flops(self.dims, rows, seq - response, response, kind, self._ratio, logits_tokens,
                                   rows=block_rows)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {task: record.summary() for task, record in self.tasks.items()}


def merge_summaries(per_rank: list[dict[str, TaskSpeed]]) -> dict[str, TaskSpeed]:
    """One TaskSpeed per task from the records of several processes."""
    merged: dict[str, TaskSpeed] = {}
    for tasks in per_rank:
        for name, record in tasks.items():
            merged.setdefault(name, TaskSpeed()).merge(record)
    return merged
