"""Decoding side of `dllm-cache bench`: how many tokens each step unmasks (the fixed schedule, a
threshold, a factor, or a recorded trace replayed), and what that means for a run's steps.

A random-weight model is never confident, so a threshold or factor decodes one token per step on
it; a trace recorded on a trained proxy model (eval/traces/run.py) replays the step counts real
parallel decoding took, so the big shapes time the steps that decoding really runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dllm_cache.analysis.flops import block_schedule, feature_kinds
from dllm_cache.sampling.trace import ReplaySchedule, batch_rows, committed_per_step, read_trace, steps_per_block, summary


@dataclass(frozen=True, eq=False)
class Decoding:
    """The sampler's unmasking rule for a bench run."""

    threshold: float | None = None
    factor: float | None = None
    trace_path: str | None = None
    trace_rows: list[dict[str, Any]] = field(default_factory=list)
    trace_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fixed(self) -> bool:
        return self.threshold is None and self.factor is None and self.trace_path is None

    @property
    def label(self) -> str:
        if self.trace_path is not None:
            return f"trace {Path(self.trace_path).name.removesuffix('.gz').removesuffix('.json')}"
        if self.threshold is not None:
            return f"threshold {self.threshold:g}"
        return "" if self.factor is None else f"factor {self.factor:g}"

    def rows_for(self, batch: int, offset: int = 0) -> list[dict[str, Any]]:
        """The trace rows a batch replays: the first `batch` (cycling when the trace has fewer)."""
        return batch_rows(self.trace_rows, batch, offset)

    def sampler_kwargs(self, batch: int, gen_len: int, block_length: int | None) -> dict[str, Any]:
        if self.trace_path is not None:
            return {"schedule": ReplaySchedule(self.rows_for(batch), gen_len, block_length)}
        return {"threshold": self.threshold, "factor": self.factor}

    def steps_per_block(self, batch: int, gen_len: int, block_length: int | None) -> list[int] | None:
        """Steps each block takes in a replay (known in advance), None for the other rules."""
        if self.trace_path is None:
            return None
        return steps_per_block(self.rows_for(batch), gen_len // (block_length or gen_len))

    def committed(self, batch: int, gen_len: int, block_length: int | None) -> list[list[int]] | None:
        """Tokens each row unmasks at each step of a replay, (steps, batch), which the feature cache's
        response_clock "tokens" counts; None for the other rules (a random-weight model under a threshold
        or factor unmasks one token per step, where the token clock is the step clock)."""
        if self.trace_path is None:
            return None
        return committed_per_step(self.rows_for(batch), gen_len // (block_length or gen_len))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.label or "fixed schedule"}
        if self.trace_path is not None:
            out.update(trace=self.trace_path, trace_summary=summary(self.trace_rows), trace_meta=self.trace_meta)
        return out


def load_decoding(threshold: float | None, factor: float | None, trace: str | None) -> Decoding:
    if sum(x is not None for x in (threshold, factor, trace)) > 1:
        raise SystemExit("pass at most one of --threshold, --factor and --trace")
    if trace is None:
        return Decoding(threshold=threshold, factor=factor)
    data = read_trace(trace)
    return Decoding(trace_path=str(trace), trace_rows=data["rows"], trace_meta=data["meta"])


def apply_trace_lengths(workload, decoding: Decoding, explicit: dict[str, Any]):
    """A replayed trace fixes the generation length and block; explicit lengths must agree with it.

    `explicit`: the lengths given on the command line (None where not given). The fixed-schedule
    baseline keeps one token per step (steps = gen length) unless --steps was given."""
    if decoding.trace_path is None:
        return workload
    meta = decoding.trace_meta
    gen, block = int(meta["gen_length"]), meta.get("block_length")
    for key, value in (("gen_len", gen), ("block_length", block)):
        if explicit.get(key) is not None and explicit[key] != value:
            raise SystemExit(f"--{key.replace('_', '-')} {explicit[key]} disagrees with the trace {decoding.trace_path} "
                             f"(recorded with {key} {value}); leave it out to use the trace's")
    steps = explicit.get("steps") or (workload.steps if workload.gen_len == gen else gen)
    return replace(workload, gen_len=gen, block_length=block, steps=steps)


def run_kinds(config: Any | None, prompt_len: int, gen_len: int, steps: int, block_length: int | None,
              per_block: list[int] | None, logit_shift: int, committed: list[list[int]] | None = None) -> list[str]:
    """Step kinds of a whole generation, in order (what the cache's stats will count); `committed`:
    a replay's tokens per step and row (`Decoding.committed`), which the feature cache's token clock counts."""
    if config is not None and config.is_block:
        n_blocks = gen_len // (block_length or gen_len)
        per_block = per_block or [steps // n_blocks] * n_blocks
        return [kind for kind, _, _ in block_schedule(config, prompt_len, gen_len, block_length, per_block, logit_shift)]
    total = sum(per_block) if per_block is not None else steps
    return feature_kinds(total, config, committed)
