"""Load benchmark of the OpenAI-compatible server (README.md)."""
