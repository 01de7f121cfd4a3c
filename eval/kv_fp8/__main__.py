"""`python -m eval.kv_fp8`: runs eval/kv_fp8/run.py."""

import sys

from eval.kv_fp8.run import main

sys.argv[0] = "python -m eval.kv_fp8"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
