"""lm-eval's own task definitions on local data: `class: !function standard.LocalStandardTask`.

Why a class and not `include:`: lm-eval resolves `include:` relative to the including YAML (or
as an absolute path), and the installed lm_eval/tasks folder lives at a different path in every
environment. This class does what `include:` would do, with the path found at run time:

    task: gsm8k_local
    class: !function standard.LocalStandardTask
    base_task: gsm8k/gsm8k.yaml              # relative to the installed lm_eval/tasks/
    custom_dataset: !function gsm8k.load_gsm8k

The base YAML is read with lm-eval's own loader; the local YAML's keys then replace the base's
(as `include:` does), and the base's data-source keys (dataset_path, dataset_name,
dataset_kwargs) are dropped, so the prompt, few-shot setup, filters, metrics and generation
settings are exactly the installed task's. Base `!function` fields the local YAML does not
replace are imported from the base task's folder; one that cannot be imported (e.g. LongBench's
metrics need `jieba`) raises, naming the field, unless the local YAML replaces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval.tasks
from lm_eval.api.task import ConfigurableTask

try:  # the task loader of lm-eval 0.4.10+ (0.4.13 tested)
    from lm_eval.tasks._yaml_loader import _import_fun_from_str, load_yaml
except ImportError as err:  # pragma: no cover - depends on the installed lm-eval
    raise ImportError(
        "dllm_cache.integrations.lm_eval: tasks/standard.py needs lm-eval's task loader "
        "lm_eval.tasks._yaml_loader (lm-eval >= 0.4.10); "
        "upgrade with `pip install -U lm-eval`."
    ) from err

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).resolve().parent
DATA_SOURCE_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset")
LOCAL_ONLY_KEYS = ("class", "base_task")
_STRUCTURE_KEYS = ("tag", "group", "task_list", "include")
# TaskConfig fields that may hold a `!function` reference.
_FUNCTION_FIELDS = (
    "process_docs", "doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_image",
    "doc_to_audio", "process_results",
)


class _FunctionRef(str):
    """A base-YAML `!function` value that has not been imported yet (its absolute dotted path)."""


def _load_yaml(path: Path) -> dict[str, Any]:
    """lm-eval's YAML loader with `!function` left unresolved, marked as _FunctionRef."""
    raw = load_yaml(path, resolve_func=False)
    base_dir = str(path.parent)
    return {
        key: _FunctionRef(value) if key in _FUNCTION_FIELDS and isinstance(value, str) and value.startswith(base_dir)
        else value
        for key, value in raw.items()
    }


def _import_ref(ref: _FunctionRef, field: str, base: Path) -> Any:
    module_path, _, name = ref.rpartition(".")
    try:
        return _import_fun_from_str(ref)
    except ImportError as err:
        raise ImportError(
            f"{base}: field {field!r} is `!function {Path(module_path).name}.{name}`, which cannot be imported "
            f"({err}). Replace {field!r} in the local task YAML, or install what it needs."
        ) from err


def standard_config(local: dict[str, Any]) -> dict[str, Any]:
    """The installed task `local["base_task"]` with the local keys laid over it (see module doc)."""
    if "base_task" not in local:
        raise ValueError(f"task {local.get('task')!r}: `class: standard.LocalStandardTask` needs `base_task: <dir>/<file>.yaml`")
    base_path = LM_EVAL_TASKS / str(local["base_task"])
    if not base_path.is_file():
        raise FileNotFoundError(
            f"task {local.get('task')!r}: base_task {local['base_task']!r} not found under {LM_EVAL_TASKS}; "
            "the installed lm-eval has no such task file (check `pip show lm-eval` and the path)."
        )
    base = _load_yaml(base_path)
    config = {k: v for k, v in base.items() if k not in (*_STRUCTURE_KEYS, *DATA_SOURCE_KEYS)}
    config.update({k: v for k, v in local.items() if k not in LOCAL_ONLY_KEYS})
    for field in _FUNCTION_FIELDS:
        if isinstance(config.get(field), _FunctionRef):
            config[field] = _import_ref(config[field], field, base_path)
    metadata = dict(base.get("metadata") or {})
    metadata.update(local.get("metadata") or {})
    metadata["base_task"] = str(base_path)
    config["metadata"] = metadata
    return config


class LocalStandardTask(ConfigurableTask):
    """A ConfigurableTask built from an installed lm-eval task YAML plus local overrides."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config=standard_config(config))
