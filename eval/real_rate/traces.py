"""Replay traces at the rate real models decode (issue 25), for `dllm-cache bench --trace` and eval/real_rate/run.py.

The proxy models' templated answers decode ~21 tokens per step, so speedups measured by replaying
their traces (eval/results/stacked.md) are upper bounds. Real models decode far fewer:

- LLaDA-8B-Instruct, GSM8K, gen 256, block 32, threshold 0.9: 3.25 tokens per step with parallel
  decoding alone, 3.01 with Fast-dLLM's KV cache (Fast-dLLM paper, arXiv 2505.22618, Fig. 1b).
- Dream-7B: 1.44-1.79 tokens per forward on GSM8K-CoT with threshold decoding (Fast-dLLM's Dream
  results), under 2 in every published setting.

The traces written here follow those numbers with one rule per model, the same for every gen length:

1. Answer: each row has an answer of A tokens (A drawn per row from the rule's range). Every
   32-token block of it takes n steps (n drawn from the rule's range: LLaDA 10-12, i.e. about 11
   steps per block, Dream 20-22); the block's tokens are split at random into n positive counts. A
   block the answer only partly fills spends a proportional share of its n steps on the answer's
   tokens (at least one step).
2. End of text: the rest of a block the answer ends in, and every later block, is end-of-text.
   The tail is modelled on the proxy traces' own tail (`measure_tail`): in every threshold-0.9 trace
   of the LLaDA proxy (eval/results/traces_llada_arith_threshold0.9_*.json.gz), each block past the
   answers (positions 192-255 of gen 256) is committed in one step, all 32 end-of-text tokens at
   once. So an all-end-of-text block costs one step here, and the end-of-text rest of the answer's
   last block one more step.
3. The answer length is the free parameter: its range is chosen so that gen 256 comes out inside
   the published band (LLaDA: 3.0-3.3 tokens per step, between 3.01 and 3.25; Dream: near 1.6).
   The same answers at gen 512 and 1024 only add end-of-text blocks (the same answer padded
   further, as a real model writes it), one step each.

Rows are deterministic from the seed; row 0 is the row whose rate is nearest the trace's mean, so
batch-1 replays (which take row 0) run at the trace's rate; a batch of 16 replays rows 0-15 and
pays, per block, for its slowest row, as batched threshold decoding does.

    PYTHONPATH=. python -m eval.real_rate.traces                  # -> eval/results/traces_real-*.json
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dllm_cache.sampling.trace import ReplaySchedule, read_trace, summary, write_trace

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROXY_TRACES = "traces_llada_arith_threshold0.9_*.json*"  # .json or .json.gz (the committed ones are gzipped)
SOURCES = {
    "llada": "Fast-dLLM (Wu et al. 2025, arXiv 2505.22618) Fig. 1b: LLaDA-8B-Instruct, GSM8K (5-shot), gen 256, "
             "block 32, threshold 0.9: 3.25 tokens/step parallel decoding alone, 3.01 with the KV cache",
    "dream": "Fast-dLLM (arXiv 2505.22618), Dream-7B-Instruct with threshold decoding: 1.44-1.79 tokens per forward "
             "on GSM8K-CoT",
}


@dataclass(frozen=True)
class Rule:
    """How one model decodes: steps per 32-token answer block, answer length range, tail steps."""

    model: str
    steps_per_answer_block: tuple[int, int]  # inclusive range, drawn per block
    answer_tokens: tuple[int, int]  # inclusive range, drawn per row
    published_band: tuple[float, float]  # tokens per step the gen-256 trace must land in
    tail_steps_per_block: int = 1  # an all-end-of-text block (measured on the proxy traces)
    block_length: int = 32


RULES = {
    "llada": Rule("LLaDA-8B-Instruct", (10, 12), (208, 248), (3.0, 3.3)),
    "dream": Rule("Dream-v0-Instruct-7B", (20, 22), (216, 248), (1.44, 1.79)),
}


def measure_tail(paths: list[Path], tail_blocks: int = 2) -> dict[str, Any]:
    """Steps the proxy took on its last `tail_blocks` blocks (past every arith answer): the
    end-of-text tail the real-rate traces copy. Returns the step-count histogram and its mean."""
    counts: Counter[int] = Counter()
    used = []
    for path in paths:
        data = read_trace(path)
        rows = [r for r in data["rows"] if not r.get("stopped")]
        if not rows:
            continue
        used.append(path.name)
        for r in rows:
            for block in r["blocks"][-tail_blocks:]:
                counts[len(block)] += 1
    n = sum(counts.values())
    if not n:
        raise ValueError(f"no proxy trace rows to measure the tail on in {[str(p) for p in paths]}")
    return {"files": used, "blocks": n, "tail_blocks_per_row": tail_blocks,
            "steps_histogram": {str(k): v for k, v in sorted(counts.items())},
            "mean_steps": sum(k * v for k, v in counts.items()) / n}


def _split(rng: random.Random, tokens: int, steps: int) -> list[int]:
    """`tokens` split into `steps` positive counts at random cut points (steps <= tokens)."""
    steps = max(1, min(steps, tokens))
    cuts = sorted(rng.sample(range(1, tokens), steps - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, tokens])]


def row_for(rule: Rule, answer: int, gen_length: int, rng: random.Random) -> dict[str, Any]:
    """One trace row: `answer` tokens at the rule's rate, then end-of-text at the tail's rate."""
    block = rule.block_length
    blocks = []
    for b in range(gen_length // block):
        in_answer = min(max(answer - b * block, 0), block)
        n = rng.randint(*rule.steps_per_answer_block)  # drawn for every block: rows stay aligned across gen lengths
        if in_answer == block:
            blocks.append(_split(rng, block, n))
        elif in_answer == 0:
            blocks.append(_split(rng, block, rule.tail_steps_per_block))
        else:
            head = _split(rng, in_answer, max(1, round(n * in_answer / block)))
            blocks.append(head + _split(rng, block - in_answer, rule.tail_steps_per_block))
    return {"blocks": blocks, "stopped": False}


def _rate(row: dict[str, Any]) -> float:
    return sum(map(sum, row["blocks"])) / sum(map(len, row["blocks"]))


def make_rows(rule: Rule, gen_length: int, n_rows: int, seed: int) -> list[dict[str, Any]]:
    """`n_rows` rows, each from its own seeded generator (row i is the same answer at every gen
    length: the longer traces only add end-of-text blocks); the row nearest the mean rate first."""
    rows = []
    for i in range(n_rows):
        rng = random.Random(f"{rule.model}/{seed}/{i}")
        answer = rng.randint(*rule.answer_tokens)
        rows.append(row_for(rule, min(answer, gen_length), gen_length, rng))
    mean = summary(rows)["tokens_per_step"]
    first = min(range(n_rows), key=lambda i: (abs(_rate(rows[i]) - mean), i))
    return [rows[first]] + rows[:first] + rows[first + 1:]


def make_trace(key: str, gen_length: int, n_rows: int = 64, seed: int = 0,
               tail: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"meta", "rows"} of one real-rate trace (write it with dllm_cache.sampling.trace.write_trace)."""
    rule = RULES[key]
    if gen_length % rule.block_length:
        raise ValueError(f"gen_length {gen_length} must be a multiple of the block ({rule.block_length})")
    rows = make_rows(rule, gen_length, n_rows, seed)
    ReplaySchedule(rows, gen_length, rule.block_length)  # a replay accepts it (raises otherwise)
    meta = {
        "name": f"real-{key}", "model": rule.model, "gen_length": gen_length, "steps": gen_length,
        "block_length": rule.block_length, "rule": "threshold:0.9 (real-rate model, not a recording)",
        "threshold": 0.9, "seed": seed, "sources": SOURCES[key], "rate_rule": asdict(rule),
        "row0_tokens_per_step": _rate(rows[0]),
        "tail": tail or "one step per end-of-text block (proxy tail not measured in this run)",
        "method": "eval/real_rate/traces.py: answer blocks at the rule's steps per block, end-of-text blocks at the "
                  "proxy traces' tail (one step per block); the answer-length range is calibrated so gen 256 lands "
                  "in the published band; gen 512/1024 add end-of-text blocks to the same answers",
        "command": "PYTHONPATH=. python -m eval.real_rate.traces",
    }
    return {"meta": meta, "rows": rows}


def trace_path(out_dir: Path, key: str, gen_length: int) -> Path:
    return out_dir / f"traces_real-{key}_gen{gen_length}.json"


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--proxy-traces", type=Path, nargs="*", default=None,
                   help=f"proxy traces to measure the tail on (default: eval/results/{PROXY_TRACES})")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llada-gen", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--dream-gen", type=int, nargs="*", default=[256])
    args = p.parse_args(argv)
    proxies = args.proxy_traces if args.proxy_traces is not None else sorted(RESULTS.glob(PROXY_TRACES))
    tail = measure_tail([q for q in proxies if not q.name.endswith("_eos.json")])
    if tail["mean_steps"] != RULES["llada"].tail_steps_per_block:
        print(f"[real_rate_traces] note: the proxy tail takes {tail['mean_steps']:.3g} steps per block, the rule "
              f"{RULES['llada'].tail_steps_per_block}")
    written = []
    for key, gens in (("llada", args.llada_gen), ("dream", args.dream_gen)):
        for gen in gens:
            trace = make_trace(key, gen, args.rows, args.seed, tail)
            path = write_trace(trace_path(args.out_dir, key, gen), trace["rows"], trace["meta"])
            s = summary(trace["rows"])
            print(f"{path}: {s['tokens_per_step']:.2f} tokens/step over {s['rows']} rows, row 0 "
                  f"{trace['meta']['row0_tokens_per_step']:.2f}, {s['mean_steps']:.1f} steps per row")
            written.append(path)
    return written


if __name__ == "__main__":
    main()
