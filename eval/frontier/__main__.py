"""`python -m eval.frontier`: runs eval/frontier/run.py."""

from eval.frontier.run import main

raise SystemExit(main())
