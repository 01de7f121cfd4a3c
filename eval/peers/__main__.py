"""`python -m eval.peers`: runs eval/peers/run.py."""

from eval.peers.run import main

raise SystemExit(main())
