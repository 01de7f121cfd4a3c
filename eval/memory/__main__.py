"""`python -m eval.memory`: runs eval/memory/run.py."""

import sys

from eval.memory.run import main

sys.argv[0] = "python -m eval.memory"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
