"""The installed package declares lm-eval's plugin entry points (lm_eval.models, lm_eval.tasks), and they
resolve: the model name to our registered class, the tasks entry to the package folder holding our task YAMLs.
lm-eval releases up to 0.4.13 do not read them (`dllm-cache eval` registers the model itself); later ones do."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from pathlib import Path

import pytest


def _entry(group: str):
    found = [ep for ep in md.entry_points(group=group) if ep.name == "dllm_cache"]
    assert found, f"no 'dllm_cache' entry point in group {group!r}: reinstall the package (pip install -e .)"
    return found[0]


def test_model_entry_point_loads_the_registered_class():
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    cls = _entry("lm_eval.models").load()
    assert cls.__name__ == "DLLMCacheLM"
    assert get_model("dllm_cache") is cls  # the name the entry point declares is the one the class registers


def test_tasks_entry_point_is_the_folder_of_our_task_yamls():
    package = importlib.import_module(_entry("lm_eval.tasks").value)
    folder = Path(package.__file__).parent
    names = {p.stem for p in folder.glob("*.yaml")}
    assert {"gsm8k_local", "arith_synth", "hotpotqa_local"} <= names
