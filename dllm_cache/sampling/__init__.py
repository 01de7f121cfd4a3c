"""Sampling: the denoising loops that call a (cached or uncached) model, and what they decode with.

    generate.py   the LLaDA and Dream samplers (their options) and `generate`, which picks one by model family
    loop.py       the block/step loop both samplers share (windows, steps, Unmasker, declared generation)
    llada.py      LLaDA's step rule: block rows, CFG, Gumbel sampling, low_confidence / random remasking
    dream.py      Dream's step rule: shifted rows, entropy / maskgit_plus / topk_margin / origin, top_p, top_k
    llada2.py     LLaDA 2.x's own loop: the official block-diffusion generate (+ LLaDA2.1 token editing)
    unmasking.py  which masked tokens a step unmasks (top-k, threshold, factor) and early stopping
    options.py    what the samplers accept: option names per family, input shapes, padding side
    trace.py      decoding traces (tokens unmasked per step) and their replay (ReplaySchedule)
    prompt.py     a prompt as token ids or as embeddings

The `generate` function is exported by the package root (`from dllm_cache import generate`); here
`generate` names its module, so it is not re-exported below. The names below load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "llada_generate": "generate",
    "dream_generate": "generate",
    "llada2_generate": "llada2",
    "SAMPLERS": "generate",
    "decode": "loop",
    "StepRule": "loop",
    "LLaDARule": "llada",
    "DreamRule": "dream",
    "EarlyStop": "unmasking",
    "tokens_per_step": "unmasking",
    "check_options": "options",
    "position_limit": "options",
    "DecodeTrace": "trace",
    "ReplaySchedule": "trace",
    "read_trace": "trace",
    "write_trace": "trace",
}

__all__ = list(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
