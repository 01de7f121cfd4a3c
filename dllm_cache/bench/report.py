"""Markdown report of a `dllm-cache bench` run: the results table, step times by kind, memory
(whole-process peak and the cache's bytes by kind), notes."""

from __future__ import annotations

import math
from typing import Any

from dllm_cache.analysis.flops import STEP_KINDS
from dllm_cache.analysis.memory import KINDS


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec)
    )


def _spread(values: list[float]) -> str:
    """min-max of the timed runs, "-" for a single run."""
    return f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else "-"


def markdown_table(report: dict[str, Any]) -> str:
    meta = report["meta"]
    w = meta["workload"]
    lines = [
        f"### {meta['tag']}: {meta['model']} ({meta['family']}, {meta['dtype']}, "
        f"{meta['device_name']})",
        "",
        f"Workload {w['name'] or 'custom'}: prompt {w['prompt_len']}, gen {w['gen_len']}, "
        f"steps {w['steps']}, block {w['block_length']}; timed steps {meta['timed_steps']}; "
        f"peaks {_fmt(meta['peak_tflops'], '.4g')} TFLOP/s, {_fmt(meta['peak_tbps'], '.3g')} TB/s"
        f" ({meta.get('peaks_source', 'given')}); weight-read floor {_fmt(meta.get('weight_floor_ms'), '.2f')} ms/step.",
        *_decoding_lines(meta.get("decoding")),
        *(["", "**Incomplete**: the rows measured before the run stopped (see meta.complete)."]
          if meta.get("complete") is False else []),
        "",
        "| batch | cache | latency s (median) | spread | tok/s | speedup | TFLOP | FLOP cut | TFLOP/s | "
        "roofline s | meas/roof | agree | recomputed | peak GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch_size']} | {r['label']} | {_fmt(r['latency_s'], '.3f')} | {_spread(r['latencies_s'])} | "
            f"{_fmt(r['tokens_per_s'], '.1f')} | {_fmt(r['speedup'], '.2f')}x | "
            f"{_fmt(r['flops'] / 1e12, '.3g')} | {_fmt(r['flop_reduction'], '.2f')}x | "
            f"{_fmt(r['achieved_tflops'], '.3g')} | {_fmt(r['roofline_s'], '.3f')} | "
            f"{_fmt(r['measured_over_roofline'], '.2f')} | {_fmt(r['agreement'], '.3f')} | "
            f"{_fmt(r['recomputed_fraction'], '.2f')} | {_peak(r)} |"
        )
    lines += [
        "",
        "Mean time per denoising step by kind, ms: measured (roofline).",
        "",
        "| batch | cache | " + " | ".join(STEP_KINDS) + " |",
        "|---:|---|" + "---:|" * len(STEP_KINDS),
    ]
    for r in report["results"]:
        roof = r["roofline_step_ms"] or {}
        cells = [
            "-" if r["step_ms"][k] is None else f"{r['step_ms'][k]:.1f}"
            + (f" ({roof[k]:.1f})" if k in roof else "")
            for k in STEP_KINDS
        ]
        lines.append(f"| {r['batch_size']} | {r['label']} | " + " | ".join(cells) + " |")
    lines += memory_table(report)
    lines.append("")
    for c in report["flop_check"]:
        diff = c["relative_diff"]
        lines.append(
            f"- FLOP check, batch {c['batch_size']}: analytic full step "
            f"{c['analytic_full_step']:.4g} vs FlopCounterMode {c['flop_counter_full_step']:.4g}"
            f" ({_fmt(None if diff is None else 100 * diff, '+.2f')}%)"
        )
    for note in meta["notes"]:
        lines.append(f"- {note}")
    for r in report["results"]:
        for note in r["notes"]:
            lines.append(f"- batch {r['batch_size']} {r['label']}: {note}")
    return "\n".join(lines) + "\n"


def _decoding_lines(decoding: dict[str, Any] | None) -> list[str]:
    """The unmasking rule, and for a replayed trace what the proxy model decoded with it."""
    if not decoding or decoding.get("rule") == "fixed schedule":
        return []
    line = f"Decoding: {decoding['rule']} (every run but the uncached one-token-per-step baseline)"
    meta, summary = decoding.get("trace_meta") or {}, decoding.get("trace_summary") or {}
    if summary:
        line += f"; {summary['tokens_per_step']:.2f} tokens per step over {summary['rows']} recorded rows"
    if meta.get("accuracy") is not None:
        line += f"; proxy accuracy {100 * meta['accuracy']:.1f}%"
        if meta.get("uncached_accuracy") is not None:
            line += f" (uncached one token per step {100 * meta['uncached_accuracy']:.1f}%)"
    return [line + "."]


def _peak(row: dict[str, Any]) -> str:
    """Measured whole-process peak, or the shape estimate marked "est." where none was measured."""
    if row.get("peak_mem_gb") is not None:
        return f"{row['peak_mem_gb']:.2f}"
    est = row.get("estimated_peak_gb")
    return "-" if est is None else f"{est:.3g} est."


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def memory_table(report: dict[str, Any]) -> list[str]:
    """Peak memory per run and what the cache held after it, by kind (dllm_cache.analysis.memory.KINDS)."""
    weights = report["meta"].get("weights_gb")
    lines = [
        "",
        "Memory: whole-process peak of the timed runs (GiB; estimate from the shapes in brackets), weights "
        + ("-" if weights is None else f"{weights:.3g} GiB") + "; the cache's bytes after the run, by kind.",
        "",
        "| batch | cache | peak (est.) | " + " | ".join(k.replace("_", " ") for k in KINDS) + " | cache total |",
        "|---:|---|---:|" + "---:|" * (len(KINDS) + 1),
    ]
    for r in report["results"]:
        held = r.get("cache_bytes") or {}
        est = r.get("estimated_peak_gb")
        peak = f"{_fmt(r.get('peak_mem_gb'), '.2f')} ({_fmt(est, '.3g')})"
        cells = [human_bytes(held.get(k)) for k in (*KINDS, "total")]
        lines.append(f"| {r['batch_size']} | {r['label']} | {peak} | " + " | ".join(cells) + " |")
    return lines
