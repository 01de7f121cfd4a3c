"""Plots of a `dllm-cache bench` run: speedup against the swept knobs (or per configuration),
measured time against the roofline, peak memory with the cache's share."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> None:
    """Speedup vs transfer ratio and vs Kr (one line per batch size); measured vs roofline; memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["meta"]["reference"]
    # the knob sweeps: feature-cache runs with the fixed schedule (block policies have no knobs)
    cached = [r for r in report["results"] if r["cache"] is not None and not
              str(r["cache"].get("policy")).startswith("block-") and r.get("decoding", "fixed") == "fixed"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    panels = [
        ("transfer_ratio", "response_interval", "transfer ratio", axes[0]),
        ("response_interval", "transfer_ratio", "Kr (response interval)", axes[1]),
    ]
    if all(len({r["cache"][key] for r in cached}) < 2 for key, *_ in panels):  # no sweep: compare configs
        _config_bars(report, axes[0], "speedup", "speedup vs uncached")
        _config_bars(report, axes[1], "measured_over_roofline", "measured / roofline time")
        panels = []
    for x_key, fixed_key, xlabel, ax in panels:
        for batch in report["meta"]["batch_sizes"]:
            pts = sorted(
                (r["cache"][x_key], r["speedup"])
                for r in cached
                if r["batch_size"] == batch
                and r["cache"][fixed_key] == ref[fixed_key]
                and r["cache"]["prompt_interval"] == ref["prompt_interval"]
                and r["cache"].get("compile", False) == ref.get("compile", False)
            )
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"batch {batch}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        fixed = f"{fixed_key.replace('_', ' ')} = {ref[fixed_key]}"
        ax.set(xlabel=xlabel, ylabel="speedup vs uncached", title=f"speedup ({fixed})")
        ax.legend()
    ax = axes[2]
    roof = [r for r in report["results"] if r["roofline_s"]]
    if roof:
        for batch in report["meta"]["batch_sizes"]:
            pts = [(r["roofline_s"], r["latency_s"]) for r in roof if r["batch_size"] == batch]
            ax.scatter(*zip(*pts), label=f"batch {batch}")
        lo = min(min(r["roofline_s"], r["latency_s"]) for r in roof) * 0.8
        hi = max(max(r["roofline_s"], r["latency_s"]) for r in roof) * 1.2
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="roofline")
        ax.set(xscale="log", yscale="log", xlabel="roofline time (s)", ylabel="measured (s)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "roofline skipped (CPU)", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("measured vs roofline")
    _memory_bars(report, axes[3])
    meta = report["meta"]
    fig.suptitle(f"{meta['tag']}: {meta['model']} {meta['dtype']} on {meta['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _config_bars(report: dict[str, Any], ax, key: str, ylabel: str) -> None:
    """Grouped bars: one group per batch size, one bar per configuration (uncached included)."""
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    batches = report["meta"]["batch_sizes"]
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        vals = [next((r[key] for r in report["results"] if r["label"] == label and r["batch_size"] == b), None) or 0
                for b in batches]
        bars = ax.bar([j + i * width for j in range(len(batches))], vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set(ylabel=ylabel, title=ylabel)
    ax.legend(fontsize=7)


def _memory_bars(report: dict[str, Any], ax) -> None:
    """Per batch size, one bar per configuration: whole-process peak (GiB; the shape estimate,
    hatched, where none was measured), and inside it the cache's bytes after the run."""
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    batches = report["meta"]["batch_sizes"]
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        rows = [next((r for r in report["results"] if r["label"] == label and r["batch_size"] == b), {})
                for b in batches]
        xs = [j + i * width for j in range(len(batches))]
        measured = [r.get("peak_mem_gb") is not None for r in rows]
        peaks = [(r.get("peak_mem_gb") if m else r.get("estimated_peak_gb")) or 0 for r, m in zip(rows, measured)]
        bars = ax.bar(xs, peaks, width, label=label, alpha=0.6)
        for bar, m in zip(bars, measured):
            bar.set_hatch("" if m else "//")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        cache = [((r.get("cache_bytes") or {}).get("total") or 0) / 2**30 for r in rows]
        ax.bar(xs, cache, width * 0.5, color="black", alpha=0.7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    weights = report["meta"].get("weights_gb")
    if weights:
        ax.axhline(weights, color="grey", lw=0.8, ls="--", label="weights")
    ax.set(ylabel="GiB", title="peak memory (hatched: estimate); black: cache")
    ax.legend(fontsize=7)
