"""`python -m eval.serving`: runs eval/serving/run.py."""

import sys

from eval.serving.run import main

sys.argv[0] = "python -m eval.serving"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
