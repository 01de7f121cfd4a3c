"""`python -m dllm_cache.bench`: the same command line as `dllm-cache bench` (the GPU scripts call it this way)."""

from dllm_cache.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
