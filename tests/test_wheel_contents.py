"""The wheel ships what `dllm-cache eval` needs outside a checkout: the lm-eval integration, every task
YAML and loader, and GSM8K's test split; not the large data (GSM8K train), found through --data-dir.

Builds the wheel from a copy of the files pyproject's package-dir names (~5 s), so the checkout gets no
build/ folder. `.ci/run` then installs a wheel into a fresh venv and runs `dllm-cache eval` from outside.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "dllm_cache" / "integrations" / "lm_eval" / "tasks"
# What the build reads (pyproject's package-dir sources plus the README it declares).
SOURCES = ("pyproject.toml", "README.md", "dllm_cache", "hooks", "eval/tiny/model", "eval/data/arith_synth", "eval/data/gsm8k")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    pytest.importorskip("setuptools")  # the build backend; --no-build-isolation: no download
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                           str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = dist.glob("dllm_cache-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_ships_every_task_file(wheel_names):
    task_files = sorted(p.name for p in TASKS.iterdir() if p.suffix in (".yaml", ".py"))
    assert any(name.endswith(".yaml") for name in task_files)
    for name in task_files:
        assert f"dllm_cache/integrations/lm_eval/tasks/{name}" in wheel_names, name
    for module in ("__init__", "model", "launch", "presets", "speed", "compare"):
        assert f"dllm_cache/integrations/lm_eval/{module}.py" in wheel_names, module
    assert "dllm_cache/integrations/__init__.py" in wheel_names


def test_wheel_ships_small_data_only(wheel_names):
    data = "dllm_cache/integrations/lm_eval/gsm8k_data/"
    assert {data + "test.jsonl", data + "LICENSE"} <= wheel_names  # GSM8K test split with its MIT licence
    assert data + "train.jsonl" not in wheel_names  # 4 MB: --data-dir / DLLM_CACHE_DATA_DIR
    assert "dllm_cache/default_data/test.jsonl" in wheel_names  # arith_synth, also `generate`'s prompts
    assert not any(n.startswith(("eval/", "tests/")) for n in wheel_names)


def test_wheel_ships_the_model_packed(wheel_names):
    """The shipped model goes in as its *.safetensors.xz archives (~30% smaller), never unpacked:
    dllm_cache.shipped.ready_model_dir unpacks them on first use."""
    archives = sorted(p.name for p in (REPO / "eval" / "tiny" / "model").glob("*.safetensors.xz"))
    assert archives, "eval/tiny/model holds no packed weights"
    model = "dllm_cache/default_model/"
    assert {model + name for name in archives + ["config.json", "tokenizer.json", "model.safetensors.index.json"]} <= wheel_names
    assert not any(n.endswith(".safetensors") for n in wheel_names)
