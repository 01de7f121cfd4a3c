"""Evaluation tooling for dllm-cache (lm-eval model class, launcher, local task YAMLs, benchmarks).

Not installed as a package: run modules from the repository root, e.g. ``python -m eval.lm_eval_launch``.
"""
