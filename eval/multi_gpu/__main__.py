"""`python -m eval.multi_gpu`: runs eval/multi_gpu/run.py."""

import sys

from eval.multi_gpu.run import main

sys.argv[0] = "python -m eval.multi_gpu"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
