"""Dynamic batching: concurrent requests with the same decoding settings run as one generation.

The first waiting request opens a batch; compatible requests (equal `Decoding.batch_key()`) that
arrive within --max-wait-ms of it join, up to --max-batch-size rows (a request with n choices is n
rows). One worker thread runs one batch at a time (a model's cache belongs to one generation); while
it runs, the next batch forms from the queue, so a busy server never waits out max_wait. Results
cross from the worker thread to the event loop with call_soon_threadsafe.

A request whose client has gone is dropped from the queue (it never takes a row); a running batch
whose every client has gone stops at its next denoising step (engine.Cancelled). A row of a batch
with live neighbours finishes with them: a static batch cannot shrink in the middle of a generation.
With `continuous=True`, batches whose settings allow it (continuous.eligible) run block by block
instead: finished and abandoned rows leave, and compatible queued requests join, at every block
boundary (continuous.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from . import continuous
from .engine import BatchReport, Engine, Job
from .metrics import Metrics


class QueueFull(RuntimeError):
    """More requests wait than --max-queue allows: a 503 the client may retry."""


class ShuttingDown(RuntimeError):
    """The server is draining for shutdown: new requests get a 503."""


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, *, max_batch_size: int = 16, max_wait_ms: float = 10.0,
                 max_queue: int = 1024, continuous: bool = False):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dllm-generate")
        self._closing = False
        self.continuous = continuous  # join running batches at block boundaries where the settings allow
        self.running_rows = 0

    # ----- event loop side ---------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job (its emit/fail callbacks report back); QueueFull or ShuttingDown when refused."""
        if self._closing:
            raise ShuttingDown("the server is shutting down; retry on another replica or later")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting (--max-queue {self.max_queue}); retry later")
        if self._task is None:  # started lazily: the loop that serves requests is the one we need
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run_forever(), name="dllm-batcher")
        self._pending.append(job)
        self.metrics.queue_length.set(len(self._pending))
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def close(self, timeout: float = 60.0) -> None:
        """Refuse new requests, finish every queued and running one, then stop the worker."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._pending or self.running_rows) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _take_batch(self) -> list[Job]:
        """The oldest live job and every compatible queued job that fits beside it."""
        while self._pending and self._pending[0].cancelled.is_set():
            self._pending.popleft()
            self.metrics.cancelled.inc()
        if not self._pending:
            return []
        first = self._pending.popleft()
        key, rows, batch = first.decoding.batch_key(), first.n, [first]
        for job in list(self._pending):
            if job.cancelled.is_set():
                self._pending.remove(job)
                self.metrics.cancelled.inc()
            elif job.decoding.batch_key() == key and rows + job.n <= self.max_batch_size:
                self._pending.remove(job)
                batch.append(job)
                rows += job.n
        return batch

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            # Let compatible requests gather until the oldest has waited max_wait (or the batch is full).
            oldest = self._pending[0].enqueued
            while time.monotonic() < oldest + self.max_wait and self._fits() < self.max_batch_size:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, oldest + self.max_wait - time.monotonic()))
            batch = self._take_batch()
            self.metrics.queue_length.set(len(self._pending))
            if not batch:
                continue
            self.running_rows = sum(job.n for job in batch)
            self.metrics.batch_size.observe(self.running_rows)
            try:
                if self.continuous and continuous.eligible(self.engine, batch[0].decoding):
                    key = batch[0].decoding.batch_key()

                    def take_more(free: int, key=key) -> list[Job]:  # worker thread -> event loop and back
                        return asyncio.run_coroutine_threadsafe(self._join(key, free), loop).result()

                    run = functools.partial(continuous.run, self.engine, batch, take_more, self.max_batch_size)
                else:
                    run = functools.partial(self.engine.run, batch)
                report: BatchReport = await loop.run_in_executor(self._executor, run)
                self.metrics.observe_batch(report)
            except Exception as err:  # noqa: BLE001  (a failed generation fails its requests, not the server)
                for job in batch:
                    job.fail(err)
                self.metrics.batch_errors.inc()
            finally:
                self.running_rows = 0

    async def _join(self, key: tuple, free: int) -> list[Job]:
        """Queued live jobs with this batch key that fit in `free` rows (continuous batching)."""
        joined, self.running_rows = [], self.max_batch_size - free  # the rows still decoding
        for job in list(self._pending):
            if job.cancelled.is_set():
                self._pending.remove(job)
                self.metrics.cancelled.inc()
            elif job.decoding.batch_key() == key and job.n <= free:
                self._pending.remove(job)
                joined.append(job)
                free -= job.n
                self.running_rows += job.n
                self.metrics.joined.inc()
        self.metrics.queue_length.set(len(self._pending))
        return joined

    def _fits(self) -> int:
        """Rows that would join the oldest job's batch now."""
        if not self._pending:
            return 0
        key = self._pending[0].decoding.batch_key()
        return sum(job.n for job in self._pending if job.decoding.batch_key() == key and not job.cancelled.is_set())
