"""GPU timing and report output shared by the eval/ measurement scripts (profile_step,
attention_backends, gemm_fusion), so they all time the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def cuda_time_ms(fn: Callable[[], object], n: int, warmup: int = 0, graph_reps: int | None = None) -> float:
    """Mean GPU time of one `fn()` call in ms, between CUDA events, after `warmup` untimed calls.

    With `graph_reps`, `n` calls are captured in one CUDA graph (warm-up runs on a side stream,
    as capture requires) and the graph is replayed `graph_reps` times: GPU time without launch
    overhead, for kernels too short to time from eager Python."""
    graph = None
    if graph_reps is not None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                fn()
        graph.replay()
    else:
        for _ in range(warmup):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    if graph is None:
        for _ in range(n):
            fn()
    else:
        for _ in range(graph_reps):
            graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (n * (graph_reps or 1))


def emit(text: str, out: str | None) -> None:
    """Print a report and, when asked, write it to `out`."""
    print(text)
    if out:
        Path(out).write_text(text)
