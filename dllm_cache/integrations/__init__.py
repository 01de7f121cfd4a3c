"""Integrations with other tools, each an optional dependency loaded only when used.

lm_eval: the `dllm_cache` model for lm-evaluation-harness, our local tasks and `dllm-cache eval`
(`pip install "dllm-cache[eval]"`).
"""

__all__ = ["lm_eval"]
