"""`python -m eval.traces`: runs eval/traces/run.py."""

from eval.traces.run import main

main()
