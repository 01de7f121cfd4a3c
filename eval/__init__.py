"""The lab of dllm-cache: proxy models, studies, benchmarks and GPU scripts (the lm-eval model, tasks
and `dllm-cache eval` live in the package: dllm_cache.integrations.lm_eval).

Not installed as a package: run modules from the repository root, e.g. ``python -m eval.frontier``.
"""
