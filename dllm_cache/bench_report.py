"""Markdown report of a `dllm-cache bench` run: the results table, step times by kind, notes."""

from __future__ import annotations

import math
from typing import Any

from dllm_cache.flops import STEP_KINDS


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec)
    )


def markdown_table(report: dict[str, Any]) -> str:
    meta = report["meta"]
    w = meta["workload"]
    lines = [
        f"### {meta['tag']}: {meta['model']} ({meta['family']}, {meta['dtype']}, "
        f"{meta['device_name']})",
        "",
        f"Workload {w['name'] or 'custom'}: prompt {w['prompt_len']}, gen {w['gen_len']}, "
        f"steps {w['steps']}, block {w['block_length']}; timed steps {meta['timed_steps']}; "
        f"peaks {meta['peak_tflops']} TFLOP/s, {meta['peak_tbps']} TB/s.",
        "",
        "| batch | cache | latency s | tok/s | speedup | TFLOP | FLOP cut | TFLOP/s | "
        "roofline s | meas/roof | agree | recomputed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch_size']} | {r['label']} | {_fmt(r['latency_s'], '.3f')} | "
            f"{_fmt(r['tokens_per_s'], '.1f')} | {_fmt(r['speedup'], '.2f')}x | "
            f"{_fmt(r['flops'] / 1e12, '.3g')} | {_fmt(r['flop_reduction'], '.2f')}x | "
            f"{_fmt(r['achieved_tflops'], '.3g')} | {_fmt(r['roofline_s'], '.3f')} | "
            f"{_fmt(r['measured_over_roofline'], '.2f')} | {_fmt(r['agreement'], '.3f')} | "
            f"{_fmt(r['recomputed_fraction'], '.2f')} |"
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
