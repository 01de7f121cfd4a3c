"""`python -m eval.traces`: runs eval/traces/run.py."""

import sys

from eval.traces.run import main

sys.argv[0] = "python -m eval.traces"  # argparse's usage line names the command, not __main__.py

main()
