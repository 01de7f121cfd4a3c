"""Longer generations from recorded decoding traces, for shapes the proxy model cannot decode.

The proxy models were trained with answers padded by end-of-text to the task's length (arith:
256), so at gen 512 they decode garbage (0 of 2 held-out problems right, uncached, CPU check
2026-11-26). Real LLaDA at gen 512 writes the same answer and pads the rest with end-of-text,
which threshold decoding fills a block per step or two. This extends each row of a gen-L trace
to gen L2 by appending blocks that repeat the row's last block's step counts: in every arith
trace that block is pure padding ([32], one step), so the added blocks cost what padding costs
there. Rows that stopped early (stop_at_eos) are left as they are.

The accuracies in the meta stay those measured at gen L (`accuracy_at_gen` says which); they are
not a measurement at L2.

    PYTHONPATH=. python -m eval.traces.extend --gen 512 --name llada-gen512 eval/results/traces_llada_arith_*.json.gz
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dllm_cache.sampling.trace import read_trace, write_trace


def extend_rows(rows: list[dict[str, Any]], blocks_to_add: int) -> list[dict[str, Any]]:
    """Each row with `blocks_to_add` copies of its last block appended (stopped rows unchanged)."""
    out = []
    for row in rows:
        if row.get("stopped") or not row["blocks"]:
            out.append(row)
            continue
        last = list(row["blocks"][-1])
        out.append({**row, "blocks": [*row["blocks"], *(list(last) for _ in range(blocks_to_add))]})
    return out


def extend(data: dict[str, Any], gen_length: int, source: str) -> dict[str, Any]:
    """A trace (read_trace's dict) at `gen_length`; meta says where it came from."""
    meta = data["meta"]
    block, old = meta["block_length"], meta["gen_length"]
    if block is None or gen_length <= old or (gen_length - old) % block:
        raise ValueError(f"{source}: can only extend a blocked trace (block {block}) from gen {old} to a longer "
                         f"length a whole number of blocks more, not {gen_length}")
    rows = extend_rows(data["rows"], (gen_length - old) // block)
    new_meta = {**meta, "gen_length": gen_length, "steps": gen_length, "extended_from": source,
                "accuracy_at_gen": meta.get("accuracy_at_gen", old),
                "extension": "each added block repeats the row's last block's step counts (end-of-text padding)"}
    return {"meta": new_meta, "rows": rows}


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", type=Path, help="trace files traces_<name>_<task>_<rule>_<cache>.json")
    p.add_argument("--gen", type=int, required=True, help="the longer generation length")
    p.add_argument("--name", required=True, help="model key of the new files, e.g. llada-gen512")
    p.add_argument("--out-dir", type=Path, default=None, help="default: beside each source")
    args = p.parse_args(argv)
    written = []
    for path in args.traces:
        try:
            data = read_trace(path)
            new = extend(data, args.gen, str(path))
        except (OSError, ValueError, KeyError) as err:
            p.error(str(err))
        prefix = f"traces_{data['meta']['name']}_"
        if not path.name.startswith(prefix):
            p.error(f"{path}: expected a name starting with {prefix!r} (eval/traces/run.py's naming)")
        out = (args.out_dir or path.parent) / f"traces_{args.name}_{path.name[len(prefix):]}"
        new["meta"]["name"] = args.name
        written.append(write_trace(out, new["rows"], new["meta"]))
        print(f"{path} -> {out}")
    return written


if __name__ == "__main__":
    main()
