"""`python -m eval.real_rate`: runs eval/real_rate/run.py."""

from eval.real_rate.run import main

raise SystemExit(main())
