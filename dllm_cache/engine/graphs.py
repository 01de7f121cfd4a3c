"""CUDA-graph replay of cached denoising steps.

A partial, response-refresh or block step does little arithmetic (a few hundred tokens of a few
thousand), so in eager PyTorch the ~70 small kernels per layer are bound by Python and launch
overhead. Within one generation every such step has the same shapes and reads/writes the same
persistent buffers, so one captured graph per step kind replays them all.

Protocol per (branch, step kind, layout): the first step of a kind runs eagerly (it warms up
cuBLAS and the caching allocator); the second is captured and then replayed; later ones only
replay. Capture records without executing, so no step is ever computed twice (V-verify is not
idempotent). Anything that fails to capture (a host sync in a foreign model's forward, say)
falls back to eager for good, with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .state import BranchState

GRAPH_KINDS = ("partial", "response", "block")


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor  # static input buffer
    attention_mask: torch.Tensor | None
    output: Any  # the model output object whose tensors the graph rewrites on replay


def graphable(config, kind: str, input_ids: torch.Tensor, branch: BranchState, disabled: bool) -> bool:
    return (
        config.cuda_graphs
        and not config.drift_triggered  # the plan waits on each step's drift (dllm_cache.engine.drift)
        and not disabled
        and kind in GRAPH_KINDS
        and input_ids.is_cuda
        and not torch.cuda.is_current_stream_capturing()
    )


def run_step(
    branch: BranchState,
    kind: str,
    forward: Callable[[torch.Tensor, torch.Tensor | None], Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    on_failure: Callable[[], None],
    layout: tuple = (),
):
    """Run one cached step through its graph (capturing it when due), or eagerly.

    `layout`: whatever else the step bakes into its kernels (the LM head's row counts and offsets);
    steps that differ in it get their own graphs."""
    key = (kind, tuple(input_ids.shape), branch.prompt_len, layout)
    step = branch.graphs.get(key)
    if step is None:
        if key not in branch.seen_kinds:
            branch.seen_kinds.add(key)
            return forward(input_ids, attention_mask)  # eager warm-up, a real step
        try:
            step = _capture(forward, input_ids, attention_mask)
        except Exception as err:  # noqa: BLE001 - any capture failure means: stay eager
            warnings.warn(f"dllm-cache: CUDA graph capture failed ({err}); cached steps run eagerly.", stacklevel=3)
            on_failure()
            torch.cuda.synchronize()
            return forward(input_ids, attention_mask)
        branch.graphs[key] = step
    step.input_ids.copy_(input_ids)
    if step.attention_mask is not None:
        step.attention_mask.copy_(attention_mask)
    step.graph.replay()
    return step.output


def _capture(forward, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> CapturedStep:
    static_ids = input_ids.clone()
    static_mask = None if attention_mask is None else attention_mask.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = forward(static_ids, static_mask)
    return CapturedStep(graph, static_ids, static_mask, output)
