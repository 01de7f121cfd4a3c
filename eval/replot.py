"""Redraw the plots of eval/results from the result files they were drawn from.

The PNGs are derived: each study writes its numbers (JSON, plain or gzipped) and draws a plot from
them. To keep the repository lean (issue 24, item 5) the plots are not tracked (.gitignore:
eval/results/**/*.png); this command draws them again, on CPU, in a few seconds:

    PYTHONPATH=. python -m eval.replot                     # every plot, beside its JSON in eval/results
    PYTHONPATH=. python -m eval.replot --out-dir /tmp/p frontier stacked   # some, elsewhere

Which JSON gives which plot (the study's own plot function, so the picture is the one its run drew):
- `frontier.json` -> `frontier.png` (eval.frontier)
- `stacked.json` -> `stacked.png` (eval.peers report)
- `real_rate.json` -> `real_rate.png` (eval.real_rate report)
- `proxy_training/loss_curves.json` -> `loss_curves.png` (eval.tiny.loss_curves)
- `tiny_*.json` (eval.tiny.evaluate reports) -> `tiny_*.png`
- `serving.json` (and any eval.serving result file: `{"device", "command", "rows": [{"concurrency", "cache",
  "tokens_per_s", ...}]}`, e.g. `serving_raw/h200_run1.json`) -> the same name `.png` (eval.serving)
- every `dllm-cache bench` report (`{"meta": {"reference", ...}, "results": [...]}`, e.g.
  `llada8b-gsm8k-policy.json`, `real_rate_raw/ours_gen256_b1.json`) -> the same name `.png`
  (dllm_cache.bench.plot)
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load_json(path: Path) -> Any:
    """A .json or gzipped .json.gz file."""
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def _stem(path: Path) -> str:
    """`name` of name.json / name.json.gz."""
    return path.name.removesuffix(".gz").removesuffix(".json")


def _frontier(data: Any, png: Path) -> None:
    from eval.frontier.run import plot

    plot(data, png)


def _stacked(data: Any, png: Path) -> None:
    from eval.peers.run import plot

    plot(data, png)


def _real_rate(data: Any, png: Path) -> None:
    from eval.real_rate.run import plot

    plot(data["rows"], png)


def _loss_curves(data: Any, png: Path) -> None:
    from eval.tiny.loss_curves import plot

    plot(data, png)


def _tiny(data: Any, png: Path) -> None:
    from eval.tiny.evaluate import plot

    plot(data, png)


def _bench(data: Any, png: Path) -> None:
    from dllm_cache.bench.plot import plot

    plot(data, png)


def _serving(data: Any, png: Path) -> None:
    from eval.serving.run import draw

    draw(data, png)


def _is_serving_result(data: Any) -> bool:
    rows = data.get("rows") if isinstance(data, dict) else None
    return ("device" in data and "command" in data and isinstance(rows, list) and bool(rows)
            and all(isinstance(r, dict) and {"concurrency", "cache", "tokens_per_s", "p50_latency_s"} <= set(r) for r in rows))


def _is_bench_report(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("meta"), dict) and "reference" in data["meta"]
            and isinstance(data.get("results"), list))


def plotter(relative: str, data: Any) -> Callable[[Any, Path], None] | None:
    """The plot function for the result file at `relative` (posix path under eval/results, without
    .json/.json.gz) holding `data`, or None when that file has no plot."""
    named = {"frontier": _frontier, "stacked": _stacked, "real_rate": _real_rate, "proxy_training/loss_curves": _loss_curves}
    if relative in named:
        return named[relative]
    if relative.startswith("tiny_") and isinstance(data, dict) and "families" in data and "results" in data:
        return _tiny
    if _is_bench_report(data):
        return _bench
    if _is_serving_result(data):
        return _serving
    return None


def plots(results: Path = RESULTS) -> dict[str, tuple[Path, Callable[[Any, Path], None]]]:
    """{relative name (no suffix): (its JSON, its plot function)} for every result file with a plot."""
    found = {}
    for path in sorted(results.rglob("*.json")) + sorted(results.rglob("*.json.gz")):
        relative = (path.parent / _stem(path)).relative_to(results).as_posix()
        try:
            data = load_json(path)
        except (OSError, ValueError):
            continue  # not a JSON result (or unreadable): nothing to draw
        draw = plotter(relative, data)
        if draw is not None:
            found[relative] = (path, draw)
    return found


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="plots to draw, by relative name without suffix (e.g. frontier "
                   "real_rate_raw/ours_gen256_b1); default: all")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder to read")
    p.add_argument("--out-dir", type=Path, default=None, help="where the PNGs go (same relative names); default: --results")
    p.add_argument("--list", action="store_true", help="list the plots and their JSON, draw nothing")
    args = p.parse_args(argv)
    found = plots(args.results)
    unknown = [n for n in args.names if n not in found]
    if unknown:
        p.error(f"no plot named {unknown}; known: {sorted(found)}")
    out_dir = args.out_dir or args.results
    written = []
    for name in args.names or sorted(found):
        source, draw = found[name]
        png = out_dir / f"{name}.png"
        if args.list:
            print(f"{source} -> {png}")
            continue
        png.parent.mkdir(parents=True, exist_ok=True)
        draw(load_json(source), png)
        print(f"{source} -> {png}")
        written.append(png)
    return written


if __name__ == "__main__":
    main()
