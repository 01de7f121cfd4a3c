"""The tracked tree stays small (issue 24, item 5): a lean repository clones fast, fits a device
call's working-tree copy, and leaves room for new results.

The sum of the sizes of the files `git ls-files` lists must stay at or under BUDGET_BYTES. When it
does not, the failure names the largest tracked files, which is where a fix starts: gzip large JSON
(the readers take .json.gz / .jsonl.gz), leave derived plots untracked (eval/results/README.md names
the command that redraws them), or move a study's raw outputs out of the tree.

Why 45 MiB (the issue's figure) holds with both shipped proxy models, which the tests and the main job
need: their bf16 weights, 45.6 MB = 43.5 MiB as plain safetensors, left no room for the code, data and
docs (the tree was 54.1 MB). They are tracked packed as *.safetensors.xz (lossless lzma, 31.9 MB), and
dllm_cache.shipped.ready_model_dir unpacks them once per user into ~/.cache/dllm_cache (or
$DLLM_CACHE_HOME). On 2026-12-03 the tree was 40.5 MB = 38.7 MiB after packing, ~6 MiB under budget.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
BUDGET_BYTES = 45 * MIB  # 47,185,920 bytes; the module docstring says why it holds
SHOWN = 10  # largest files named on failure


def tracked_sizes(repo: Path) -> dict[str, int] | None:
    """{path: bytes} of every file `git ls-files` lists that exists in the working tree, or None
    when `repo` is not a git checkout (an sdist, a wheel's test run) or git is not installed."""
    if shutil.which("git") is None:
        return None
    res = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=False)
    if res.returncode != 0:
        return None
    sizes = {}
    for name in res.stdout.decode("utf-8", "surrogateescape").split("\0"):
        path = repo / name
        if name and path.is_file() and not path.is_symlink():  # deleted-but-not-committed files are not counted
            sizes[name] = path.stat().st_size
    return sizes


def over_budget(sizes: dict[str, int], budget: int, shown: int = SHOWN) -> str | None:
    """None when the files fit in `budget` bytes, else a message with the total and the `shown`
    largest files (largest first)."""
    total = sum(sizes.values())
    if total <= budget:
        return None
    largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:shown]
    lines = "\n".join(f"  {size / MIB:7.2f} MiB  {name}" for name, size in largest)
    return (f"tracked tree is {total / MIB:.2f} MiB ({total:,} bytes), over the {budget / MIB:.2f} MiB budget by "
            f"{(total - budget) / MIB:.2f} MiB. Largest tracked files:\n{lines}\n"
            "Gzip large JSON/JSONL (readers take .gz), untrack derived plots, or move raw outputs out of the tree.")


def test_tracked_tree_within_budget():
    sizes = tracked_sizes(REPO)
    if sizes is None:
        pytest.skip(f"{REPO} is not a git checkout (or git is missing): nothing tracked to measure")
    assert sizes, "git ls-files listed no files"
    problem = over_budget(sizes, BUDGET_BYTES)
    assert problem is None, problem


def test_over_budget_names_the_largest_files():
    sizes = {"small.txt": 10, "eval/big.bin": 3 * MIB, "mid.json": 2 * MIB, "tiny": 1}
    assert over_budget(sizes, 5 * MIB + 11) is None  # exactly at the budget passes
    message = over_budget(sizes, 5 * MIB + 10, shown=2)
    assert message is not None and "over the 5.00 MiB budget" in message
    names = [line.split()[-1] for line in message.splitlines() if "MiB  " in line]
    assert names == ["eval/big.bin", "mid.json"]


def test_not_a_checkout_is_skipped_not_failed(tmp_path):
    assert tracked_sizes(tmp_path) is None
