"""lm-evaluation-harness integration: the `dllm_cache` model, the local tasks and `dllm-cache eval`.

    model.py    DLLMCacheLM, registered with lm-eval as `--model dllm_cache` on import
    launch.py   `dllm-cache eval`: lm-eval's CLI with the model, the tasks and our options
    presets.py  the published per-task settings (`--preset NAME`)
    speed.py    per-task wall time, tokens/s, forwards by step kind and FLOPs (SpeedMeter)
    compare.py  speed rows in lm-eval's results and `--compare` (uncached vs cached)
    tasks/      the task YAMLs, their data loaders and scorers (package data)

Importing this package does not import lm-eval: the names below load on first use, so the
library and `dllm-cache eval --help` work without it (`pip install "dllm-cache[eval]"`).
"""

from __future__ import annotations

from ..._lazy import lazy_exports
from .tasks import TASKS_DIR

# public name -> submodule that defines it (imported on first access: several need lm-eval)
_LAZY = {
    "DLLMCacheLM": "model",
    "main": "launch",
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
    "SpeedMeter": "speed",
    "with_speed": "compare",
}

__all__ = ["TASKS_DIR", *_LAZY]


__getattr__ = lazy_exports(__name__, _LAZY)
