"""eval/results/mutation.json from mutmut's results (bash eval/mutation/run.sh runs it).

Step 1 (mutants/): every mutant mutmut checked against the core test subset. Step 2
(mutants-recheck/mutants/): step 1's survivors against the later tests (the oracle tests, the kill
tests). A mutant counts as killed if either step killed it; each one left is listed with its module,
line and mutation. A survivor argued equivalent (no observable behaviour change) keeps its argument
from the previous mutation.json when the same mutation is found again: arguments are written by hand
there, as "status": "equivalent" with an "argument".

    python -m eval.mutation.report [--out eval/results/mutation.json]
    python -m eval.mutation.report --list-survivors [--skip-equivalent]  # step 1's survivors, one name a line
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "eval" / "results" / "mutation.json"

# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded into what the report counts
KILLED = {1, 3, 24, -24, 152, 255, 36, -11, -9}  # a failing test, a timeout, a crash: the mutant was noticed
SURVIVED = {0}
NO_TESTS = {5, 33}  # no selected test reaches the function: a survivor too


def verdicts(mutants: Path) -> dict[str, tuple[str, int | None]]:
    """mutant name -> (source path relative to the repo, mutmut's exit code or None if not run)."""
    out = {}
    for meta in sorted(mutants.glob("dllm_cache/**/*.py.meta")):
        path = meta.relative_to(mutants).with_suffix("").as_posix()  # mutmut's paths are relative to mutants/
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = (path, code)
    return out


def _mutation(name: str, path: str, root: Path) -> tuple[int | None, str]:
    """(line in the original source, "old -> new") of one mutant, from mutmut's diff (run in `root`)."""
    import os  # noqa: PLC0415

    from mutmut.mutation.diff_apply import get_diff_for_mutant  # noqa: PLC0415 (only where mutmut is installed)

    cwd = os.getcwd()
    os.chdir(root)  # mutmut reads mutants/<path>
    try:
        diff = get_diff_for_mutant(name, path=path).splitlines()[2:]
    finally:
        os.chdir(cwd)
    old = [line[1:] for line in diff if line.startswith("-")]
    new = [line[1:] for line in diff if line.startswith("+")]
    source = (root / path).read_text().splitlines()
    func = name.split(".")[-1].split("__mutmut_")[0].removeprefix("x_").split("ǁ")[-1]
    start = next((i for i, line in enumerate(source) if re.match(rf"\s*def {re.escape(func)}\(", line)), 0)
    line = None
    if old:
        line = next((i + 1 for i in range(start, len(source)) if source[i].strip() == old[0].strip()), None)
    return line, " / ".join(s.strip() for s in old) + "  ->  " + " / ".join(s.strip() for s in new)


def in_scope(results: dict[str, tuple[str, int | None]], scope: Path) -> dict[str, tuple[str, int | None]]:
    """The mutants eval/mutation/scope.txt names (globs), or all if it is missing."""
    if not scope.exists():
        return results
    patterns = [p.strip() for p in scope.read_text().splitlines() if p.strip() and not p.lstrip().startswith("#")]
    return {n: v for n, v in results.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}


def survivors_of(results: dict[str, tuple[str, int | None]]) -> list[str]:
    return sorted(n for n, (_, code) in results.items() if code is not None and code not in KILLED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--recheck", type=Path, default=ROOT / "mutants-recheck")
    parser.add_argument("--list-survivors", action="store_true")
    parser.add_argument("--skip-equivalent", action="store_true",
                        help="with --list-survivors: leave out those --out argues equivalent")
    args = parser.parse_args()
    first = in_scope(verdicts(args.mutants), ROOT / "eval" / "mutation" / "scope.txt")
    if args.list_survivors:  # left after step 1 and the re-check so far
        names = survivors_of(first)
        if (args.recheck / "mutants").exists():
            second = verdicts(args.recheck / "mutants")
            names = [n for n in names if second.get(n, ("", None))[1] not in KILLED]
        if args.skip_equivalent and args.out.exists():
            argued = {s["mutant"] for s in json.loads(args.out.read_text())["survivors"] if s.get("status") == "equivalent"}
            names = [n for n in names if n not in argued]
        print("\n".join(names))
        return
    import mutmut  # noqa: PLC0415

    second = verdicts(args.recheck / "mutants") if (args.recheck / "mutants").exists() else {}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    argued = {(s["module"], s["mutation"]): s for s in previous.get("survivors", []) if s.get("status") == "equivalent"}
    checked = {n: v for n, v in first.items() if v[1] is not None}
    killed_first = sum(code in KILLED for _, code in checked.values())
    killed_second, survivors = 0, []
    for name in survivors_of(first):
        path, code = first[name]
        code2 = second.get(name, (path, None))[1]
        if code2 in KILLED:
            killed_second += 1
            continue
        line, text = _mutation(name, path, ROOT)
        entry = {"mutant": name, "module": path, "line": line, "mutation": text}
        old = argued.get((path, text))
        if old is not None:
            entry.update(status="equivalent", argument=old["argument"])
        else:
            why = "no selected test reaches this function" if code in NO_TESTS else "no test fails"
            entry.update(status="survived", why=why + ("" if code2 is not None else " (not re-checked with the later tests)"))
        survivors.append(entry)
    n_equivalent = sum(s["status"] == "equivalent" for s in survivors)
    report = {
        "tool": f"mutmut {getattr(mutmut, '__version__', '3')}",
        "modules": sorted({path for path, _ in first.values()}),
        "scope": "eval/mutation/scope.txt (functions on the cached path; eval/results/mutation.md)",
        "checked": len(checked),
        "not_run": len(first) - len(checked),
        "killed": killed_first + killed_second,
        "killed_by_core_subset": killed_first,
        "killed_by_recheck": killed_second,
        "survived": len(survivors) - n_equivalent,
        "equivalent": n_equivalent,
        "survivors": survivors,
    }
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: checked {report['checked']}, killed {report['killed']} ({killed_second} by the re-check), "
          f"survived {report['survived']}, equivalent {report['equivalent']}")


if __name__ == "__main__":
    main()
