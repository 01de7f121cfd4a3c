"""The local lm-eval tasks: YAMLs, their data loaders (data.py), scorers (scoring.py) and the class
that runs lm-eval's own task definitions on local data (standard.py).

lm-eval reads this folder as an `--include_path` and loads the .py files by path (`!function
data.load_gsm8k`), not through this package; `dllm-cache eval` adds the path (TASKS_DIR).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["TASKS_DIR"]
