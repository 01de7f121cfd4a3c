"""The small LLaDA-architecture model trained by the project on synthetic tasks.

`tasks` (data generators), `tokenizer` (closed word-level vocabulary), `train` (masked diffusion
SFT), `evaluate` (accuracy with and without the cache).
"""
