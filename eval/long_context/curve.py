"""The learning curves of a long-task fine-tune, drawn from the reports it wrote.

Why a picture: the curriculum's story (validation recall dipping each time the record count grows, then
recovering past the gate) is a shape, and the table in eval/long_context/README.md only lists where each
stage began. Each report's `training.curve` (step, elapsed seconds, record range, validation accuracy at
that range) becomes one panel line per model; the record range's upper end is drawn on a second axis.

    PYTHONPATH=. python -m eval.long_context.curve eval/results/frontier_llada-kv.json.gz \\
        eval/results/frontier_dream-kv.json.gz --out eval/results/long_context_training.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.frontier.run import read_json


def curves(paths: list[Path]) -> dict[str, list[dict]]:
    """model name -> its validation points, in order; a report without a training record is refused (it was
    not a fine-tune run, or it predates the curriculum)."""
    out = {}
    for path in paths:
        report = read_json(path)
        points = (report.get("training") or {}).get("curve")
        if not points:
            raise SystemExit(f"{path}: no training.curve (a report of `python -m eval.long_context.run` with the "
                             "record curriculum has one)")
        out[report["model"]] = points
    return out


def plot(by_model: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_model), figsize=(6 * len(by_model), 4), squeeze=False)
    for ax, (model, points) in zip(axes[0], by_model.items()):
        seconds = [p["elapsed"] for p in points]
        ax.plot(seconds, [100 * p["accuracy"] for p in points], marker="o", ms=3, label="validation exact match")
        ax.axhline(90, color="grey", lw=0.8, ls=":", label="stage gate (90%)")
        ax.set(title=model, xlabel="seconds since the call started", ylabel="validation exact match (%)", ylim=(-2, 102))
        records = ax.twinx()
        records.step(seconds, [p["records"][1] for p in points], where="post", color="tab:orange", alpha=0.6)
        records.set_yscale("log")
        records.set_ylabel("records per prompt (stage's upper end)", color="tab:orange")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="frontier_<name>-kv.json(.gz) files of fine-tune runs")
    p.add_argument("--out", type=Path, default=Path("eval/results/long_context_training.png"))
    args = p.parse_args(argv)
    plot(curves(args.reports), args.out)
    print(f"[long_context] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
