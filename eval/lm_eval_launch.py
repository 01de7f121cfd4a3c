"""Run lm-eval's command line with the `dllm_cache` model and this repo's local tasks registered.

    python -m eval.lm_eval_launch --model dllm_cache --tasks gsm8k_local --limit 50 \
        --model_args pretrained=/ckpt/llada,dtype=bfloat16,gen_length=256,steps=256,block_length=32,cache=on
    accelerate launch -m eval.lm_eval_launch --model dllm_cache ...      # data parallel
    python -m eval.lm_eval_launch ls tasks                                # lists gsm8k_local, hotpotqa_local

Any lm-eval CLI argument works (`run` is implied when no subcommand is given, as in lm-eval).
`--include_path eval/tasks` is added unless the caller passes their own `--include_path`
(lm-eval takes one path only; copy our YAMLs and utils.py next to yours to use both).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_SUBCOMMANDS_WITH_INCLUDE = {"run", "ls", "validate"}


def with_task_dir(argv: list[str]) -> list[str]:
    """`argv` plus `--include_path <repo>/eval/tasks` when the user gave none and the command
    takes one (run, ls, validate, or the legacy form without a subcommand)."""
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return list(argv)
    if argv[0].startswith("-") or argv[0] in _SUBCOMMANDS_WITH_INCLUDE:
        if argv[0].startswith("-"):
            argv = ["run", *argv]  # make the implied subcommand explicit
        return [*argv, "--include_path", str(TASKS_DIR)]
    return list(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m eval.lm_eval_launch` and `dllm-cache eval`; returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    importlib.import_module("eval.lm_eval_model")  # registers --model dllm_cache
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *with_task_dir(argv)]
    try:
        cli_evaluate()  # lm-eval's CLI parses sys.argv itself
    except SystemExit as stop:  # argparse --help / usage errors
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
