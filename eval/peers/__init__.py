"""Side by side on one GPU: our engine, the original dLLM-Cache and Fast-dLLM (README.md)."""
