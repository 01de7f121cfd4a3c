"""Prometheus metrics of one server (GET /metrics, text format).

Each server owns a CollectorRegistry instead of prometheus_client's process-wide default, so two
apps in one process (tests, a Ray replica restarted in place) never register a name twice.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .engine import BatchReport

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int = 16):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dllm_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("dllm_prompt_tokens", "prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("dllm_completion_tokens", "tokens returned to clients", registry=r)
        self.generated_tokens = Counter("dllm_generated_tokens", "tokens the model generated (all rows, to the end "
                                        "token or max_tokens)", registry=r)
        self.queue_length = Gauge("dllm_queue_length", "requests waiting for a batch", registry=r)
        self.batch_size = Histogram("dllm_batch_size", "rows per batched generation", registry=r,
                                    buckets=tuple(sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})))
        self.latency = Histogram("dllm_request_latency_seconds", "request latency, arrival to last byte",
                                 ["endpoint"], registry=r, buckets=_LATENCY_BUCKETS)
        self.first_block = Histogram("dllm_time_to_first_block_seconds", "arrival to the first streamed block",
                                     registry=r, buckets=_LATENCY_BUCKETS)
        self.batch_seconds = Histogram("dllm_batch_seconds", "wall time of one batched generation", registry=r,
                                       buckets=_LATENCY_BUCKETS)
        self.cache_steps = Counter("dllm_cache_steps", "denoising steps by cache step kind (full, response_refresh, "
                                   "prompt_refresh, partial, block)", ["kind"], registry=r)
        self.cancelled = Counter("dllm_cancelled_requests", "requests whose client went away before the answer",
                                 registry=r)
        self.cancelled_batches = Counter("dllm_cancelled_batches", "generations stopped early because no client needed "
                                         "more (clients gone, answers complete)", registry=r)
        self.joined = Counter("dllm_joined_requests", "requests that joined a running batch at a block boundary "
                              "(continuous batching)", registry=r)
        self.batch_errors = Counter("dllm_batch_errors", "generations that raised (their requests got a 500)", registry=r)

    def observe_batch(self, report: BatchReport) -> None:
        self.generated_tokens.inc(report.generated_tokens)
        self.batch_seconds.observe(report.seconds)
        for kind, count in report.cache_steps.items():
            self.cache_steps.labels(kind=kind.removesuffix("_steps")).inc(count)
        if report.cancelled:
            self.cancelled_batches.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
