"""The README and docs/ stay true: short README, links that resolve, generated config doc up to date,
and a quick start that really runs.

The quick-start block is executed as written except for its generation length (shortened so the test
stays within ~30 s on a loaded 2-core CPU): the replacement is asserted to apply, so a README edit that
changes those arguments fails here rather than silently running something else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

# [text](target) not preceded by "!" is a link; images are links too for our purpose, so accept both.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _markdown_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _relative_links(path: Path) -> list[str]:
    """Link targets in `path` outside code fences that point into the repository (no scheme, not a pure anchor)."""
    text = _FENCE.sub("", path.read_text())
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target)
    return out


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_doc", DOCS / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it <= {MAX_README_LINES} and move detail to docs/"


def test_every_relative_link_resolves():
    files = _markdown_files()
    assert len(files) >= 10, f"expected README, CHANGELOG and the docs pages, found {[f.name for f in files]}"
    broken = []
    checked = 0
    for path in files:
        for target in _relative_links(path):
            checked += 1
            file_part = target.split("#", 1)[0]
            if not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert checked > 20, f"only {checked} relative links found: is the link pattern still matching?"
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path):
    """The checker itself can fail: a link to a missing file is reported, a fenced one is ignored."""
    page = tmp_path / "page.md"
    page.write_text("see [a](missing.md) and [b](https://x.org)\n```\n[c](also_missing.md)\n```\n")
    assert _relative_links(page) == ["missing.md"]


def test_configuration_doc_matches_the_fields():
    generator = _load_generator()
    expected = generator.render()
    actual = (DOCS / "configuration.md").read_text()
    assert actual == expected, "docs/configuration.md is stale: run `python docs/gen_config_doc.py`"
    import dataclasses

    from dllm_cache.config import CacheConfig

    for f in dataclasses.fields(CacheConfig):
        assert f"| `{f.name}` |" in actual, f"CacheConfig.{f.name} is missing from docs/configuration.md"


def _quick_start_block() -> str:
    text = README.read_text()
    marker = text.index("<!-- quick-start:")
    match = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert match, "no ```python block after the quick-start marker in README.md"
    return match.group(1)


def test_quick_start_runs_on_the_shipped_model():
    code = _quick_start_block()
    full = "gen_length=256, steps=64, block_length=8"
    assert full in code, f"the quick start no longer calls generate with {full!r}; update this test"
    code = code.replace(full, "gen_length=16, steps=4, block_length=8")
    stdout = io.StringIO()
    namespace: dict = {"__name__": "readme_quick_start"}
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, "README.md:quick-start", "exec"), namespace)
    out, batch, answer = namespace["out"], namespace["batch"], namespace["answer"]
    prompt_len = batch.input_ids.shape[1]
    assert tuple(out.shape) == (1, prompt_len + 16)
    assert out[0, :prompt_len].tolist() == batch.input_ids[0].tolist(), "the prompt must come back unchanged"
    assert isinstance(answer, str) and answer in stdout.getvalue()
    stats = namespace["dllm_cache"].cache_stats(namespace["model"])
    assert stats["steps"] == 4 and stats["generations"] == 1, stats


@pytest.mark.parametrize("command", [
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dllm-cache generate',
    'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[dev,eval]" && python -m pytest',
])
def test_readme_keeps_the_two_commands(command):
    assert command in README.read_text(), f"README.md must keep this command verbatim (.ci/run and users rely on it): {command}"
