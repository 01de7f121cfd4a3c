"""`python -m eval.peers`: runs eval/peers/run.py."""

import sys

from eval.peers.run import main

sys.argv[0] = "python -m eval.peers"  # argparse's usage line names the command, not __main__.py

raise SystemExit(main())
