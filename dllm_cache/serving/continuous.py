"""Continuous batching for LLaDA-family models: a waiting request joins a running batch at the next
block boundary, and a finished or abandoned row leaves there, instead of every request waiting for
the whole batch to drain.

Why block boundaries: semi-AR decoding commits one block at a time, and with the fixed schedule every
row of a batch spends the same steps per block, so all rows reach a boundary together. There each row
is laid out afresh as

    [left padding | prompt + committed blocks | current block (masks) | later blocks (masks) | right padding]

so the current block sits in the same columns for every row, whatever its prompt length and however
far it is. Padding keys are masked and LLaDA's attention depends on relative positions only, so a row
sees exactly the tokens it would see decoded alone. Each round (one block for all rows) is one
declared generation for the cache: its first step is a full forward, as the block policies
(block-prefix, block-dual) do at every block start anyway; they therefore lose nothing. The feature
cache ("default", "paper") instead restarts its refresh clocks every block, so it is refused here and
served by the static batcher.

Scope: LLaDA-family samplers (not Dream, whose logits are shifted), the fixed schedule (no threshold:
rows would reach block ends at different steps), greedy decoding, a block policy. Uncached requests
are left to the static batcher too: rows at different stages widen the batch (up to the longest
prefix plus the longest remainder), which the block policies barely pay for (they recompute one
block per step) but a full forward pays in full; on CPU it measured slower than static batching.
Other requests use the static batcher (batcher.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .engine import CACHE_PRESETS, BatchReport, Cancelled, Decoding, Engine, Job


def eligible(engine: Engine, d: Decoding) -> bool:
    """Whether a request with these settings can join at block boundaries (see the module docstring)."""
    config = CACHE_PRESETS[d.cache]
    return engine.family == "llada" and d.threshold is None and d.temperature == 0 and config is not None and config.is_block


@dataclass
class _Row:
    job: Job
    choice: int
    committed: list[int] = field(default_factory=list)  # tokens of the finished blocks
    sent: int = 0
    done: bool = False


@torch.no_grad()
def run(engine: Engine, jobs: list[Job], take_more: Callable[[int], list[Job]], max_rows: int) -> BatchReport:
    """Decode `jobs` (equal batch keys, eligible) block by block; between blocks, drop finished and
    abandoned rows and add jobs from `take_more(free_rows)` (called in this worker thread; it fetches
    compatible queued jobs from the event loop)."""
    from dllm_cache.engine.patch import cache_enabled, cache_stats, declared_generation, is_cache_enabled
    from dllm_cache.sampling.unmasking import tokens_per_step, topk_rows

    t0 = time.perf_counter()
    d = jobs[0].decoding
    B, blocks = d.block_length, d.gen_length // d.block_length
    spb = d.steps // blocks
    model, mask_id, pad = engine.model, engine.mask_id, engine.pad_id
    rows = [_Row(job, c) for job in jobs for c in range(job.n)]
    report = BatchReport(rows=len(rows), generated_tokens=0, seconds=0.0)
    config = CACHE_PRESETS[d.cache]

    def logits_of(x: torch.Tensor, attn: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if is_cache_enabled(model):
            return model(x, attention_mask=attn, logits_to_keep=slice(lo, hi)).logits
        return model(x, attention_mask=attn).logits[:, lo:hi]

    def one_block() -> None:
        lefts = [r.job.prompt_ids + r.committed for r in rows]
        suffix = [(blocks - len(r.committed) // B) * B for r in rows]  # current + later blocks
        L, S = max(map(len, lefts)), max(suffix)
        x = torch.full((len(rows), L + S), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), L + S), dtype=torch.long)
        for i, (left, s) in enumerate(zip(lefts, suffix)):
            x[i, L - len(left):L] = torch.tensor(left, dtype=torch.long)
            x[i, L:L + s] = mask_id
            attn[i, L - len(left):L + s] = 1
        x, attn = x.to(engine.device), attn.to(engine.device)
        counts = tokens_per_step(torch.full((len(rows),), B, device=x.device), spb)  # (rows, spb)
        with declared_generation(model, L, B):
            for i in range(spb):
                if all(r.job.cancelled.is_set() for r in rows):
                    raise Cancelled("every client of this batch has gone")
                logits = logits_of(x, attn, L, L + B)  # (rows, B, vocab)
                logits[..., mask_id] = -math.inf
                x0 = logits.argmax(dim=-1)
                conf = torch.softmax(logits.float(), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
                block = x[:, L:L + B]
                masked = block == mask_id
                conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
                picked = topk_rows(conf, counts[:, i], math.ceil(B / spb)) & masked
                x[:, L:L + B] = torch.where(picked, x0, block)
        new = x[:, L:L + B].tolist()
        for r, tokens in zip(rows, new):
            r.committed.extend(tokens)
            _emit(engine, r, blocks * B, report)

    joined: list[Job] = []
    try:
        with cache_enabled(model, config) if config is not None else contextlib.nullcontext():
            while rows:
                one_block()
                rows = [r for r in rows if not r.done and not r.job.cancelled.is_set()]
                free = max_rows - len(rows)
                if free > 0:
                    new_jobs = take_more(free)
                    joined += new_jobs
                    rows += [_Row(job, c) for job in new_jobs for c in range(job.n)]
            if config is not None:
                stats = cache_stats(model)
                report.cache_steps = {k: int(stats[k]) for k in ("full_steps", "block_steps") if k in stats}
    except Cancelled:
        report.cancelled = True
    except Exception as err:
        for job in joined:  # the batcher fails the jobs it started with; those that joined later fail here
            job.fail(err)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _emit(engine: Engine, r: _Row, gen_length: int, report: BatchReport) -> None:
    """Send the row's newest block (cut at an end token or max_tokens); mark it done when it is."""
    end = min(len(r.committed), r.job.max_tokens)
    new, reason = r.committed[r.sent:end], None
    for i, tok in enumerate(new):
        if tok in engine.eos_ids:
            new, reason = new[:i], "stop"
            break
    r.sent += len(new)
    if reason is None and (end >= r.job.max_tokens or len(r.committed) >= gen_length):
        reason = "length"
    r.done = reason is not None
    report.generated_tokens += len(new)
    if not r.job.cancelled.is_set():
        r.job.emit(r.choice, new, reason)
