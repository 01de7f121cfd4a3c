"""The lab of dllm-cache: proxy models (tiny/), one folder per study with its runner and README, result
files (results/); eval/README.md is the index. The lm-eval model, tasks and `dllm-cache eval` live in the
package (dllm_cache.integrations.lm_eval); the library never imports this.

Not installed as a package: run from the repository root, e.g. ``PYTHONPATH=. python -m eval.frontier``.
"""
