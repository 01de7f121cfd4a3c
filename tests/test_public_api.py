"""Every name a package offers in `__all__` is there when read (the subpackages load theirs on first use),
and a name it does not offer is an AttributeError that names the package."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["dllm_cache", "dllm_cache.engine", "dllm_cache.sampling", "dllm_cache.analysis", "dllm_cache.bench",
            "dllm_cache.integrations.lm_eval"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    if package.endswith("lm_eval"):
        pytest.importorskip("lm_eval")
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package}.__all__ names what it does not hold: {missing}"
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_importing_the_library_loads_no_optional_dependency():
    import subprocess
    import sys

    check = ("import sys, dllm_cache, dllm_cache.engine, dllm_cache.sampling, dllm_cache.integrations.lm_eval; "
             "loaded = [m for m in ('lm_eval', 'fastapi', 'ray') if m in sys.modules]; "
             "sys.exit(f'loaded {loaded}' if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_checkout_without_the_hooks_mapping_is_a_clear_import_error(tmp_path):
    """No import-time path hack: pip maps the top-level hooks/ to dllm_cache.hooks; a bare copy of the package
    (python -S: no site-packages, so no editable install's finder) says how to install instead of half-importing."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import dllm_cache

    shutil.copytree(Path(dllm_cache.__file__).parent, tmp_path / "dllm_cache",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run([sys.executable, "-S", "-c", "import dllm_cache"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "ImportError: dllm_cache.hooks is missing" in run.stderr and "pip install -e ." in run.stderr
