"""torch.compile for the cached block forward (opt-in: CacheConfig(compile=True)).

Between prompt refreshes a cached layer runs ~70 kernels, most of them tiny elementwise ops
(float32 RMSNorm, RoPE, the cosine similarity of V-verify, gathers); fused by Inductor they
become a handful. The GEMMs stay cuBLAS, so the compiled layer computes the same thing in
fewer launches; float32 sums may be reordered, so logits can differ in the last bits. The
block KV-cache policies' layer (a block's rows against cached K/V) is compiled the same way.

One compiled function serves every layer (module parameters are graph inputs, not
constants). The first layout compiles with static shapes (one graph per step kind and layer-0
flag, during the eager warm-up step of each kind, before any CUDA graph is captured); a new
layout recompiles once with the changed sizes symbolic (dynamo's automatic dynamic shapes),
so varying prompt lengths (lm-eval) do not recompile per example.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch

from .block_cache import block_rows_forward
from .layer import cached_block_forward, response_rows_forward

# Each new generation layout (batch, lengths, selected count) adds compiles of the same code
# object; dynamo's default limit of 8 would silently fall back to eager in a benchmark sweep.
RECOMPILE_LIMIT = 64


def _compiled(fn: Callable, dynamic: bool | None = None) -> Callable:
    """`fn` through torch.compile, falling back to eager (for good, with one warning) on any error."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    # emulate_precision_casts: round at every bf16 cast inside fused kernels, as eager does,
    # so the compiled layer stays as close as it can to the eager arithmetic.
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, options={"emulate_precision_casts": True})
    failed = False

    def call(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a compiler failure must not break generation
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise  # let the CUDA-graph capture fail and fall back as a whole
                failed = True
                warnings.warn(f"dllm-cache: torch.compile of the cached layer failed ({err}); running it eagerly.",
                              stacklevel=2)
        return fn(*args, **kwargs)

    return call


def compiled_block_forward(dynamic: bool | None = None) -> Callable:
    """The cached block forward with its common path (response_rows_forward) through
    torch.compile, falling back to eager on any compile error."""
    return partial(cached_block_forward, response_rows=_compiled(response_rows_forward, dynamic))


def compiled_block_rows(dynamic: bool | None = None) -> Callable:
    """The block KV-cache policies' layer (block_cache.block_rows_forward) through torch.compile."""
    return _compiled(block_rows_forward, dynamic)
