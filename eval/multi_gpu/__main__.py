"""`python -m eval.multi_gpu`: runs eval/multi_gpu/run.py."""

from eval.multi_gpu.run import main

raise SystemExit(main())
