"""Data-parallel lm-eval with the dllm_cache model, one GPU vs two (README.md)."""
