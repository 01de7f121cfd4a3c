#!/usr/bin/env bash
# Mutation testing of the engine core (issue 29, item 4) with mutmut 3.x. Not part of CI.
#
#   bash eval/mutation/run.sh            # 1. the scoped run: eval/mutation/scope.txt's functions against the core
#                                    #    test subset (pyproject.toml [tool.mutmut]), results in mutants/
#   bash eval/mutation/run.sh recheck    # 2. the survivors of 1 again, against RECHECK_TESTS (the oracle tests and
#                                    #    the kill tests), in a copy of the tree: mutants-recheck/
#                                    #    (SKIP_EQUIVALENT=1: not those mutation.json argues equivalent; a second call
#                                    #    re-checks those still alive with the current tests; RECHECK_FRESH=1 starts over)
#   bash eval/mutation/run.sh report     # eval/results/mutation.json from 1 and 2 (both runs end with it)
#   bash eval/mutation/run.sh all        # every mutant of the core modules ([tool.mutmut] only_mutate): hours on 2 cores
#   bash eval/mutation/run.sh NAME...    # just these mutants (mutmut names or globs)
#
# mutmut copies the tree into mutants/ (git-ignored), records which of the selected tests reach each
# mutated function, then runs, per mutant, only those tests, stopping at the first failure. Why two
# steps: mutmut resets every verdict when its test selection changes, so the re-check of the survivors
# with later tests runs in its own copy, whose selection is RECHECK_TESTS alone (a survivor of 1
# already passed the core subset). Everything runs niced, one worker (JOBS=n for more).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python}
if ! "$PY" -c "import mutmut" 2>/dev/null; then
    "$PY" -m pip install "mutmut>=3.8,<3.9"
fi
JOBS=${JOBS:-1}
RECHECK_TESTS=${RECHECK_TESTS:-"tests/test_core_invariants.py tests/test_oracle_cache.py tests/test_reference_samplers.py"}

run() {
    # a later call reuses mutants/ and the test map (mutmut checks the sources' hashes)
    nice -n 19 "$PY" -m mutmut run --max-children "$JOBS" "$@" || true
}

recheck() {
    # SKIP_EQUIVALENT=1: leave out the survivors mutation.json argues equivalent (no test can kill those)
    mapfile -t survivors < <("$PY" -m eval.mutation.report --list-survivors ${SKIP_EQUIVALENT:+--skip-equivalent})
    if [ "${#survivors[@]}" -eq 0 ]; then echo "no survivors to re-check"; return; fi
    if [ -d mutants-recheck ] && [ -z "${RECHECK_FRESH:-}" ]; then
        # again: the survivors not yet killed, with the tests as they are now (new tests get their stats)
        cp -r tests/. mutants-recheck/tests/
    else
        rm -rf mutants-recheck && mkdir mutants-recheck
        tar --exclude=./mutants --exclude=./mutants-recheck --exclude=./.git --exclude=./.venv -cf - . | tar -xf - -C mutants-recheck
        # the same [tool.mutmut] section with RECHECK_TESTS as the test selection
        "$PY" - "$RECHECK_TESTS" <<'EOF'
import re, sys
path = "mutants-recheck/pyproject.toml"
text = open(path).read()
selection = re.search(r"pytest_add_cli_args_test_selection = \[.*?\n\]", text, flags=re.S).group(0)
keep = re.findall(r'"-k", "[^"]*"', selection)  # the same -k filter as step 1
items = ", ".join([f'"{t}"' for t in sys.argv[1].split()] + keep)
open(path, "w").write(text.replace(selection, f"pytest_add_cli_args_test_selection = [{items}]"))
EOF
    fi
    # mutmut looks up each named mutant's tests with [] (a KeyError for a function that no re-check test
    # reaches); with .get such a mutant is reported "no tests" instead, as in step 1
    (cd mutants-recheck && nice -n 19 "$PY" -c '
import sys
import mutmut.__main__ as m
m.tests_for_mutant_names = lambda names: {t for n in names
                                          for t in m.state().tests_by_mangled_function_name.get(m.mangled_name_from_mutant_name(n), ())}
sys.argv = ["mutmut", "run", *sys.argv[1:]]
m.cli()' --max-children "$JOBS" "${survivors[@]}" || true)
}

case "${1:-scoped}" in
    all) run ;;
    report) ;;
    recheck) recheck ;;
    scoped) mapfile -t names < <(grep -v '^\s*\(#\|$\)' eval/mutation/scope.txt); run "${names[@]}" ;;
    *) run "$@" ;;
esac
"$PY" -m eval.mutation.report
