"""Decoding traces: how many tokens each denoising step unmasked, per row and semi-AR block.

Parallel decoding (threshold, factor) makes the number of steps data-dependent, so a random-weight
model, whose predictions are never confident, cannot show its speed. A trace recorded on a trained
model (`generate(..., trace=DecodeTrace())`) is replayed on any model of the same generation
length and block (`generate(..., schedule=ReplaySchedule(rows, ...))`): every step unmasks exactly
the recorded number of tokens, so step count and step kinds are those of real parallel decoding.

A row is {"blocks": [[n, n, ...], ...], "stopped": bool}: per semi-AR block (one block: the whole
response) the tokens each of the row's steps unmasked, counting only steps where the row still had
masks in the block (a batched sampler keeps stepping until every row's block is full); "stopped":
the row ended early (stop_at_eos): its trace ends there, and its remaining masks were filled.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class _Generation:
    num_blocks: int
    steps: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # block, counts, active
    stopped: torch.Tensor | None = None


class DecodeTrace:
    """Records the steps of every generation it is passed to, in call order; `rows()` returns them.

    Tensors stay on the device while generating (no host sync per step); `rows()` reads them."""

    def __init__(self) -> None:
        self._generations: list[_Generation] = []
        self._rows: list[dict[str, Any]] = []

    def begin(self, num_blocks: int) -> None:
        self._flush()
        self._generations.append(_Generation(num_blocks))

    def record(self, block: int, counts: torch.Tensor, active: torch.Tensor) -> None:
        """One step: tokens each row unmasked (batch,), and whether the row had masks to decode (batch,)."""
        self._generations[-1].steps.append((block, counts.detach().clone(), active.detach().clone()))

    def end(self, stopped: torch.Tensor) -> None:
        """The rows (batch,) bool that ended early."""
        self._generations[-1].stopped = stopped.detach().clone()

    def _flush(self) -> None:
        for gen in self._generations:
            self._rows += _rows_of(gen)
        self._generations = []

    def rows(self) -> list[dict[str, Any]]:
        self._flush()
        return list(self._rows)


def _rows_of(gen: _Generation) -> list[dict[str, Any]]:
    if not gen.steps:
        return []
    blocks = [b for b, _, _ in gen.steps]
    counts = torch.stack([c for _, c, _ in gen.steps]).tolist()  # (steps, batch)
    active = torch.stack([a for _, _, a in gen.steps]).tolist()
    batch = len(counts[0])
    stopped = gen.stopped.tolist() if gen.stopped is not None else [False] * batch
    rows = []
    for r in range(batch):
        per_block: list[list[int]] = [[] for _ in range(gen.num_blocks)]
        for s, b in enumerate(blocks):
            if active[s][r]:
                per_block[b].append(int(counts[s][r]))
        while per_block and not per_block[-1]:  # blocks after an early stop
            per_block.pop()
        rows.append({"blocks": per_block, "stopped": bool(stopped[r])})
    return rows


class ReplaySchedule:
    """Per-row, per-block step counts for a sampler to replay (`generate(..., schedule=...)`).

    rows: trace rows (see the module docstring), one per batch row; gen_length and block_length
    (None: one block) must be those the trace was recorded with."""

    def __init__(self, rows: list[dict[str, Any]], gen_length: int, block_length: int | None):
        self.block_length = block_length or gen_length
        if self.block_length < 1 or gen_length % self.block_length:
            raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}).")
        self.gen_length = gen_length
        self.num_blocks = gen_length // self.block_length
        if not rows:
            raise ValueError("a replay schedule needs at least one trace row.")
        self.rows = [self._checked(i, row) for i, row in enumerate(rows)]
        # Steps of block b: as many as its slowest row took (the others wait, unmasking nothing).
        self.block_steps = [max((len(r["blocks"][b]) for r in self.rows if b < len(r["blocks"])), default=0)
                            for b in range(self.num_blocks)]
        self.counts: torch.Tensor | None = None  # (blocks, batch, max steps) on the sampler's device
        self.ends: torch.Tensor | None = None  # (blocks, batch) bool: the row's trace ends in that block

    def _checked(self, i: int, row: dict[str, Any]) -> dict[str, Any]:
        blocks, stopped = row.get("blocks"), bool(row.get("stopped", False))
        if not isinstance(blocks, list) or not all(
            isinstance(b, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in b)
            for b in blocks
        ):
            raise ValueError(f"trace row {i}: 'blocks' must be a list of lists of token counts >= 0, got {blocks!r}.")
        where = f"trace row {i} (gen_length {self.gen_length}, block_length {self.block_length})"
        if len(blocks) > self.num_blocks or (not stopped and len(blocks) != self.num_blocks) or not blocks:
            raise ValueError(f"{where}: has {len(blocks)} blocks, expected {self.num_blocks}"
                             f"{' or fewer (it stopped early)' if stopped else ''}: was it recorded with another "
                             "gen_length / block_length?")
        sums = [sum(b) for b in blocks]
        if any(s > self.block_length for s in sums) or (not stopped and any(s != self.block_length for s in sums)):
            raise ValueError(f"{where}: unmasks {sums} tokens per block, expected {self.block_length} in every block"
                             f"{' (fewer in its last block: it stopped early)' if stopped else ''}.")
        return {"blocks": blocks, "stopped": stopped}

    def prepare(self, batch: int, device: torch.device) -> None:
        """Move the counts to the device once, before the first step (one copy, not one per step)."""
        if batch != len(self.rows):
            raise ValueError(f"the replay schedule has {len(self.rows)} trace rows but the batch has {batch} rows.")
        steps = max(self.block_steps) or 1
        counts = torch.zeros(self.num_blocks, batch, steps, dtype=torch.long)
        ends = torch.zeros(self.num_blocks, batch, dtype=torch.bool)
        for r, row in enumerate(self.rows):
            for b, block in enumerate(row["blocks"]):
                counts[b, r, : len(block)] = torch.tensor(block, dtype=torch.long)
            if row["stopped"]:
                ends[len(row["blocks"]) - 1, r] = True
        self.counts, self.ends = counts.to(device), ends.to(device)
        self.kmax = [[max((r["blocks"][b][i] for r in self.rows if b < len(r["blocks"]) and i < len(r["blocks"][b])),
                          default=0) for i in range(self.block_steps[b])] for b in range(self.num_blocks)]

    def finished_after(self, block: int) -> bool:
        """True when every row stopped early by the end of `block` (the generation stops there)."""
        return all(r["stopped"] and len(r["blocks"]) <= block + 1 for r in self.rows)


def batch_rows(rows: list[dict[str, Any]], batch: int, offset: int = 0) -> list[dict[str, Any]]:
    """`batch` trace rows starting at `offset`, cycling through `rows` when there are fewer."""
    if not rows:
        raise ValueError("the trace has no rows.")
    return [rows[(offset + i) % len(rows)] for i in range(batch)]


def steps_per_block(rows: list[dict[str, Any]], num_blocks: int) -> list[int]:
    """Denoising steps per block of a batch made of these rows (the slowest row of each block)."""
    return [max((len(r["blocks"][b]) for r in rows if b < len(r["blocks"])), default=0) for b in range(num_blocks)]


def committed_at(rows: list[dict[str, Any]], block: int, step: int) -> list[int]:
    """Tokens each row unmasked at step `step` of block `block` (host ints): 0 once the row's block is full
    (it waits) or its trace ended. What a replay reports to the cache after that step
    (CacheConfig.response_clock "tokens")."""
    return [r["blocks"][block][step] if block < len(r["blocks"]) and step < len(r["blocks"][block]) else 0 for r in rows]


def committed_per_step(rows: list[dict[str, Any]], num_blocks: int) -> list[list[int]]:
    """`committed_at` for every step of a batch made of these rows, (steps, batch): block by block,
    `steps_per_block` steps each. What `analysis.flops.generation_cost(committed=...)` plans with."""
    return [committed_at(rows, b, i) for b, n in enumerate(steps_per_block(rows, num_blocks)) for i in range(n)]


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean steps per row, tokens per step and the share of rows that stopped early."""
    steps = [sum(len(b) for b in r["blocks"]) for r in rows]
    tokens = [sum(sum(b) for b in r["blocks"]) for r in rows]
    return {
        "rows": len(rows),
        "mean_steps": sum(steps) / max(1, len(rows)),
        "tokens_per_step": sum(tokens) / max(1, sum(steps)),
        "stopped_fraction": sum(r.get("stopped", False) for r in rows) / max(1, len(rows)),
    }


def write_trace(path: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """{"meta": ..., "summary": ..., "rows": [...]} as JSON; meta must hold gen_length and block_length."""
    for key in ("gen_length", "block_length"):
        if key not in meta:
            raise ValueError(f"trace meta needs {key!r} (the replay checks it).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"meta": meta, "summary": summary(rows), "rows": rows}, separators=(",", ":")) + "\n"
    if path.suffix == ".gz":  # traces_*.json.gz: a tenth of the size (one-token-per-step traces are long)
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)
    return path


def read_trace(path: str | Path) -> dict[str, Any]:
    """A trace file written by write_trace (or eval/traces/run.py; .json, or gzipped .json.gz), checked
    for the keys a replay needs."""
    path = Path(path)
    data = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
    if not isinstance(data, dict) or "rows" not in data or "gen_length" not in data.get("meta", {}):
        raise ValueError(f"{path}: not a decoding trace (expected {{'meta': {{'gen_length', 'block_length', ...}}, "
                         "'rows': [...]}}, as eval/traces/run.py writes).")
    return data
