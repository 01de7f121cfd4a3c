"""The product's tests stand without the lab (issue 24, item 3).

eval/ is the lab (proxy training, studies, GPU scripts); the library never imports it, and neither may
the product's tests: every test module that imports eval, directly or through another module of tests/,
carries the `lab` marker (`pytestmark = pytest.mark.lab`), so `pytest -m "not lab"` runs the product's
tests alone and `pytest -m lab` the lab's. Shared modules of tests/ that are not test modules
(helpers.py, conftest.py, trajectory.py, the references) may not import eval at all: product tests
import them. Imports are read from the source (ast), so this costs no import of torch or eval.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def eval_imports(tree: ast.AST) -> set[str]:
    """Modules of eval/ that `tree` imports anywhere (module level or inside functions), absolute
    imports and importlib.import_module("eval...") calls with a literal name."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "eval" or a.name.startswith("eval.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "eval" or node.module.startswith("eval."):
                found.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (node.args[0].value == "eval" or node.args[0].value.startswith("eval."))):
            found.add(node.args[0].value)
    return found


def imported_tests_modules(tree: ast.AST) -> set[str]:
    """Modules of tests/ that `tree` imports (`tests.x`, `from tests import x`, `from tests.x import y`): 'x'."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tests.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tests":
                found |= {a.name for a in node.names}
            elif node.module.startswith("tests."):
                found.add(node.module.split(".")[1])
    return found


def has_lab_mark(tree: ast.Module) -> bool:
    """A module-level `pytestmark` that is, or lists, `pytest.mark.lab`."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            if any(isinstance(m, ast.Attribute) and m.attr == "lab" and ast.unparse(m.value) == "pytest.mark" for m in marks):
                return True
    return False


def violations(sources: dict[str, str]) -> list[str]:
    """What breaks the rule in `sources` (module name in tests/ -> its source): a test module that
    reaches eval (itself or through the tests/ modules it imports) without the lab marker, or a
    shared module that reaches it at all."""
    trees = {name: ast.parse(src) for name, src in sources.items()}
    direct = {name: eval_imports(tree) for name, tree in trees.items()}
    deps = {name: imported_tests_modules(tree) & trees.keys() for name, tree in trees.items()}
    reach: dict[str, str] = {name: f"imports {sorted(mods)[0]}" for name, mods in direct.items() if mods}
    changed = True
    while changed:  # through the tests/ modules each imports, to a fixed point
        changed = False
        for name, used in deps.items():
            if name not in reach:
                via = sorted(d for d in used if d in reach)
                if via:
                    reach[name] = f"imports tests.{via[0]}, which {reach[via[0]]}"
                    changed = True
    problems = []
    for name, why in sorted(reach.items()):
        if not name.startswith("test_"):
            problems.append(f"tests/{name}.py {why}, but product tests import it: move what it needs out of eval/")
        elif not has_lab_mark(trees[name]):
            problems.append(f"tests/{name}.py {why} but has no `pytestmark = pytest.mark.lab`: mark it, or stop importing eval/")
    return problems


def test_product_tests_do_not_import_the_lab():
    sources = {p.stem: p.read_text() for p in sorted(TESTS.glob("*.py"))}
    assert not violations(sources), "\n".join(violations(sources))


def test_lab_tests_are_marked_and_found():
    """The marker is there on the lab's test modules (the ones that import eval today), so `-m lab`
    selects something: a guard that found no lab test would pass for the wrong reason."""
    marked = [p.name for p in TESTS.glob("test_*.py") if has_lab_mark(ast.parse(p.read_text()))]
    assert "test_frontier_eval.py" in marked and "test_tiny_pipeline.py" in marked, marked


@pytest.mark.parametrize(("sources", "expected"), [
    ({"test_a": "from eval.frontier import run\n"}, "tests/test_a.py imports eval.frontier but has no"),
    ({"test_a": "def test():\n    import eval.tiny.tasks\n"}, "tests/test_a.py imports eval.tiny.tasks but has no"),
    ({"test_a": "import importlib\nm = importlib.import_module('eval.peers')\n"}, "imports eval.peers but has no"),
    ({"helpers": "from eval import replot\n"}, "tests/helpers.py imports eval, but product tests import it"),
    ({"test_a": "from tests import test_b\n", "test_b": "import pytest\nimport eval\npytestmark = pytest.mark.lab\n"},
     "tests/test_a.py imports tests.test_b, which imports eval but has no"),
    ({"test_a": "import pytest\nfrom eval import x\npytestmark = [pytest.mark.gpu]\n"}, "test_a.py imports eval but has no"),
])
def test_the_guard_sees_a_product_test_that_imports_the_lab(sources, expected):
    found = violations(sources)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("source", [
    "import pytest\nfrom eval import x\npytestmark = pytest.mark.lab\n",
    "import pytest\nfrom eval import x\npytestmark = [pytest.mark.gpu, pytest.mark.lab]\n",
    "from dllm_cache import shipped\nimport evaluate\nfrom .eval import x\n",  # not the lab: another package, a relative import
])
def test_the_guard_accepts_marked_lab_tests_and_other_packages(source):
    assert violations({"test_a": source}) == []
