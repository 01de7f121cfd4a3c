"""`dllm-cache eval`: lm-eval's command line with the `dllm_cache` model and our local tasks registered.

    dllm-cache eval --model dllm_cache --tasks gsm8k_local --limit 50 \
        --model_args pretrained=/ckpt/llada,dtype=bfloat16,gen_length=256,steps=256,block_length=32,cache=on
    dllm-cache eval --preset llada-instruct-gsm8k --model_args pretrained=/ckpt/llada --limit 50
    dllm-cache eval --compare --tasks hotpotqa_long --model_args pretrained=...,cache=on
    accelerate launch -m dllm_cache.integrations.lm_eval.launch --model dllm_cache ...   # data parallel
    dllm-cache eval ls tasks                                              # lists the local tasks

Any lm-eval CLI argument works (`run` is implied when no subcommand is given, as in lm-eval).
`--include_path <package>/tasks` is added unless the caller passes their own `--include_path`
(lm-eval takes one path only; copy our YAMLs and .py files next to yours to use both).
Three options of our own come before lm-eval's (LAUNCHER_HELP); the results carry per-task speed
rows (compare.py).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .tasks import TASKS_DIR
from .tasks.data import DATA_DIR_ENV

_SUBCOMMANDS_WITH_INCLUDE = {"run", "ls", "validate"}
LAUNCHER_HELP = """\
dllm-cache eval: lm-eval's CLI with the dllm_cache model and the local tasks (gsm8k_local, arith_synth, ...).
Options of dllm-cache (all other options are lm-eval's, listed below):
  --data-dir DIR folder holding the task data that is not shipped with the package (gsm8k/train.jsonl,
                 hotpotqa/distractor_600.jsonl, hotpotqa_synth/test.jsonl.gz; same layout as a checkout's
                 eval/data); default: $DLLM_CACHE_DATA_DIR, else the checkout's eval/data when there is one.
  --preset NAME  published per-task settings (docs/evaluation.md "Presets", presets.py): the model args
                 (gen_length, steps, block_length, sampler, cache on with Kp/Kr/ratio; explicit
                 --model_args win) and, unless given, --model dllm_cache, --tasks, --num_fewshot,
                 --apply_chat_template and --fewshot_as_multiturn of the source.
  --compare      load the model once and run the same examples uncached, then cached; print the
                 scores, wall time, tokens/s and FLOPs side by side (the saved results are the
                 cached run's, with the uncached scores under "dllm_cache_compare").
--model defaults to dllm_cache. Every run adds per-task speed rows (filter "speed") to lm-eval's
results table and JSON.
"""


def with_task_dir(argv: list[str]) -> list[str]:
    """`argv` plus `--include_path <package>/tasks` when the user gave none and the command
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


def with_default_model(argv: list[str]) -> list[str]:
    """`argv` plus `--model dllm_cache` for a `run` that names no model (lm-eval's default is hf)."""
    if not argv or argv[0] != "run" or _option_index(argv, "--model") is not None:
        return list(argv)
    if any(a in ("-h", "--help") for a in argv):
        return list(argv)
    return [*argv, "--model", "dllm_cache"]


def _option_index(argv: list[str], name: str) -> int | None:
    for i, arg in enumerate(argv):
        if arg == name or arg.startswith(name + "="):
            return i
    return None


def _pop_option(argv: list[str], name: str, missing: str) -> tuple[list[str], str | None]:
    """argv without `name VALUE` / `name=VALUE`, and VALUE (None when absent; the last one when repeated).
    `missing`: the error when the value is not there (the end of argv, or another --option)."""
    rest, value = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        elif arg == name:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(missing)
            value, i = argv[i + 1], i + 1
        else:
            rest.append(arg)
        i += 1
    return rest, value


def split_launcher_options(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """argv without our own options, the --preset name (or None) and whether --compare is on
    (`--data-dir` is taken out first, by pop_data_dir)."""
    rest, preset = _pop_option(argv, "--preset", "--preset needs a name, e.g. --preset llada-instruct-gsm8k")
    return [a for a in rest if a != "--compare"], preset, "--compare" in rest


def pop_data_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without `--data-dir DIR` / `--data-dir=DIR`, and DIR (None when not given)."""
    rest, data_dir = _pop_option(
        argv, "--data-dir", "--data-dir needs a folder, e.g. --data-dir ~/dllm-cache-data (holding gsm8k/train.jsonl)"
    )
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ValueError(f"--data-dir {data_dir}: no such folder; expected one laid out as a checkout's eval/data "
                         "(gsm8k/train.jsonl, hotpotqa/distractor_600.jsonl, ...)")
    return rest, data_dir


def _with_model_arg(model_args: str, key: str, value: str) -> str:
    """lm-eval's --model_args (key=value,... or a JSON object) plus key=value (explicit one kept)."""
    text = model_args.strip()
    if text.startswith("{"):
        parsed: dict[str, Any] = json.loads(text)
        parsed.setdefault(key, value)
        return json.dumps(parsed)
    present = {part.split("=", 1)[0].strip() for part in text.split(",") if "=" in part}
    if key in present:
        return text
    return f"{text},{key}={value}" if text else f"{key}={value}"


def expand_preset(argv: list[str], name: str) -> list[str]:
    """argv with `preset=NAME` in --model_args and the preset's lm-eval settings for every option
    the user did not give (--model, --tasks, --num_fewshot, --apply_chat_template,
    --fewshot_as_multiturn)."""
    from .presets import get_preset

    preset = get_preset(name)
    argv = list(argv)
    index = _option_index(argv, "--model_args")
    if index is None:
        argv += ["--model_args", f"preset={preset.name}"]
    elif argv[index] == "--model_args":
        if index + 1 >= len(argv):
            raise ValueError("--model_args needs a value")
        argv[index + 1] = _with_model_arg(argv[index + 1], "preset", preset.name)
    else:
        argv[index] = "--model_args=" + _with_model_arg(argv[index].split("=", 1)[1], "preset", preset.name)
    additions: list[str] = []
    if _option_index(argv, "--model") is None:
        additions += ["--model", "dllm_cache"]
    for option, value in preset.lm_eval_args.items():
        if _option_index(argv, f"--{option}") is None:
            additions += [f"--{option}"] if value is True else [f"--{option}", str(value)]
    return [*argv, *additions]


MODEL_ARGS_HELP = "--model-args-help"  # prints model_args_help() (for `dllm-cache eval --help`) and exits


def model_args_help() -> str:
    """The dllm_cache model arguments with their defaults, read from the model class and from
    CacheConfig's fields (each with its own help), so the help stays in step with both."""
    import dataclasses
    import inspect
    import textwrap

    from dllm_cache.config import CacheConfig

    from .model import DLLMCacheLM

    doc = inspect.getdoc(DLLMCacheLM) or ""
    args_doc = textwrap.dedent(doc.split("Args", 1)[1].split("\n", 1)[1]) if "Args" in doc else doc
    params = [p for p in list(inspect.signature(DLLMCacheLM.__init__).parameters.values())[1:]
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    defaults = ", ".join(
        f"{p.name}=" + ("(required)" if p.default is inspect.Parameter.empty else str(p.default)) for p in params
    )
    cache_lines = []
    for f in dataclasses.fields(CacheConfig):
        cache_lines.append(f"  {f.name}={f.default}")
        cache_lines += textwrap.wrap(f.metadata["help"], 100, initial_indent="      ", subsequent_indent="      ")
    return (
        "dllm_cache model arguments (--model_args key=value,key=value,...):\n"
        + "\n".join("  " + line for line in args_doc.splitlines())
        + "\n\ndefaults: " + defaults + "\n"
        + "\nCacheConfig fields (model args too, used with cache=on; default, then help):\n"
        + "\n".join(cache_lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dllm-cache eval` (and `python -m dllm_cache.integrations.lm_eval.launch`); returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == [MODEL_ARGS_HELP]:
        print(model_args_help(), end="")
        return 0
    try:
        argv, data_dir = pop_data_dir(argv)
        argv, preset, compare = split_launcher_options(argv)
        if preset:
            argv = expand_preset(argv, preset)
    except ValueError as err:
        print(f"dllm-cache eval: error: {err}", file=sys.stderr)
        return 2
    if not argv or any(a in ("-h", "--help") for a in argv[:2]):
        print(LAUNCHER_HELP)
    if data_dir is not None:  # the task loaders read it (lm-eval loads them by path, in this process)
        os.environ[DATA_DIR_ENV] = str(Path(data_dir).expanduser().resolve())
    importlib.import_module(f"{__package__}.model")  # registers --model dllm_cache
    import lm_eval
    from lm_eval.__main__ import cli_evaluate

    from .compare import with_speed

    report: dict[str, Any] = {}
    had_attribute = "simple_evaluate" in vars(lm_eval)
    original = lm_eval.simple_evaluate
    lm_eval.simple_evaluate = with_speed(original, compare=compare, report=report)  # the CLI imports it per run
    saved = sys.argv
    sys.argv = ["lm-eval", *with_default_model(with_task_dir(argv))]
    try:
        cli_evaluate()  # lm-eval's CLI parses sys.argv itself
    except SystemExit as stop:  # argparse --help / usage errors
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except FileNotFoundError as err:
        if "--data-dir" not in str(err):  # not a task data file of ours (tasks/data.py names the option)
            raise
        print(f"dllm-cache eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
        if had_attribute:
            lm_eval.simple_evaluate = original
        else:
            del lm_eval.simple_evaluate
    if report.get("compare"):
        print(report["compare"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
