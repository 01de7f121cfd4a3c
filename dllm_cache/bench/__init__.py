"""The benchmark (`dllm-cache bench`, `python -m dllm_cache.bench`): cached vs uncached speed, FLOPs and memory.

    factory.py   the models and prompts: random-weight shapes, checkpoints, workloads, random prompts
    runner.py    the timed runs, the rows, the cache settings and policies, run_bench and its outputs
    cli.py       the command line: the parser, the device check, the dry run, main
    decoding.py  how many tokens each step unmasks: the fixed schedule or a replayed trace
    memory.py    the logits rows the samplers ask for, per-run peak memory and the preflight check
    peaks.py     the GPU's real HBM bandwidth and bf16 peak, for the roofline
    report.py    the markdown report
    plot.py      the plots (speedup against the swept knobs)

The names below load on first use (`plot` names a module here, so its function is not re-exported).
"""

from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "main": "cli",
    "run_bench": "runner",
    "build_model": "factory",
    "random_prompts": "factory",
    "SHAPES": "factory",
    "WORKLOADS": "factory",
    "markdown_table": "report",
}

__all__ = list(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
