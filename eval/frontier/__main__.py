"""`python -m eval.frontier`: runs eval/frontier/run.py."""

import sys

from eval.frontier.run import main

sys.argv[0] = "python -m eval.frontier"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
