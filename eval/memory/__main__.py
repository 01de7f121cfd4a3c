"""`python -m eval.memory`: runs eval/memory/run.py."""

from eval.memory.run import main

raise SystemExit(main())
