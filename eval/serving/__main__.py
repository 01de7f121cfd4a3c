"""`python -m eval.serving`: runs eval/serving/run.py."""

from eval.serving.run import main

raise SystemExit(main())
