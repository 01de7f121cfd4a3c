"""`python -m eval.kv_fp8`: runs eval/kv_fp8/run.py."""

from eval.kv_fp8.run import main

raise SystemExit(main())
