"""`python -m eval.real_rate`: runs eval/real_rate/run.py."""

import sys

from eval.real_rate.run import main

sys.argv[0] = "python -m eval.real_rate"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
