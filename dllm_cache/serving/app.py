"""The HTTP routes: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, plus /health and
/metrics, on FastAPI.

A request is validated (protocol), turned into decoding settings (engine), queued (batcher), and
answered when its rows finish, or streamed as Server-Sent Events one semi-AR block at a time:
semi-AR decoding commits blocks left to right, so a completed block's text is final and can be
sent at once; the stream ends with `data: [DONE]`. Every error is OpenAI's JSON error object with
a 4xx/5xx status, never a bare 500 page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, QueueFull, ShuttingDown
from .engine import Engine, Job, RequestError
from .metrics import Metrics
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    chunk_body,
    completion_body,
    error_body,
    new_request_id,
)

_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
_POLL_S = 0.25  # how often a waiting request checks that its client is still there


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_=type_, param=param, code=code), status_code=status)


class _Choice:
    """One row's answer as it arrives: token ids, the text so far, stop strings applied."""

    def __init__(self, decode, stops: list[str]):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters already streamed
        self.reason: str | None = None
        self._hold = max((len(s) for s in stops), default=1) - 1  # a stop string may straddle two blocks

    def add(self, ids: list[int], reason: str | None) -> None:
        if self.reason is not None:
            return  # finished by a stop string: the row still runs with its batch, the rest is dropped
        self.ids.extend(ids)
        self.text = self.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text, reason = self.text[: min(hits)], "stop"
            # usage counts the tokens returned: those of the text before the stop string
            self.ids = self.ids[: self._tokens_of(self.text)]
        self.reason = reason

    def _tokens_of(self, text: str) -> int:
        """The fewest leading ids whose text covers `text`."""
        for n in range(len(self.ids) + 1):
            if len(self.decode(self.ids[:n])) >= len(text):
                return n
        return len(self.ids)

    def delta(self) -> str:
        """New text that is safe to send now (held back: a possible stop-string prefix, a split character)."""
        end = len(self.text) if self.reason is not None else max(self.sent, len(self.text) - self._hold)
        while self.reason is None and end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1  # an incomplete multi-byte character: wait for the next block
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


class _Pending:
    """A queued job and the event queue its worker-thread callbacks feed."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, n: int, stops: list[str]):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = loop
        decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        self.choices = [_Choice(decode, stops) for _ in range(n)]
        self.job: Job | None = None

    def emit(self, choice: int, ids: list[int], reason: str | None) -> None:  # worker thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("block", choice, ids, reason))

    def fail(self, err: BaseException) -> None:  # event loop (batcher) or worker thread (continuous batching)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("error", err))

    @property
    def finished(self) -> bool:
        return all(c.reason is not None for c in self.choices)

    async def next(self, timeout: float) -> tuple:
        event = await asyncio.wait_for(self.queue.get(), timeout)
        if event[0] == "error":
            raise event[1]
        _, choice, ids, reason = event
        self.choices[choice].add(ids, reason)
        if self.finished and self.job is not None:
            self.job.cancelled.set()  # nothing more to send: a batch of only this job may stop
        return event


def build_app(engine: Engine, *, max_batch_size: int = 16, max_wait_ms: float = 10.0, max_queue: int = 1024,
              request_timeout_s: float = 600.0, continuous: bool = False) -> FastAPI:
    """The server for one loaded model. Nothing runs until the first request (the batcher starts lazily
    on the serving event loop), so the app can be built in one process and served in another."""
    metrics = Metrics(max_batch_size)
    batcher = Batcher(engine, metrics, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                      continuous=continuous)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close(timeout=request_timeout_s)  # uvicorn has already finished the open requests

    app = FastAPI(title="dllm-cache", description="OpenAI-compatible server for masked diffusion LMs with dLLM-Cache",
                  lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json")
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            msg = f"unknown parameter {loc[-1]!r}; see docs/serving.md for the accepted fields"
        elif first.get("type") == "missing":
            msg = f"missing required parameter {'.'.join(loc)!r}"
        where = ".".join(loc)
        return _error(400, f"{where}: {msg}" if where and first.get("type") != "extra_forbidden" else msg,
                      param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), type_="not_found_error" if err.status_code == 404 else
                      "invalid_request_error")

    @app.exception_handler(RequestError)
    async def _bad(_request: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, str(err), param=err.param)

    app.add_middleware(_CountRequests, metrics=metrics)

    @app.get("/health")
    async def health() -> dict:
        # "replica" tells replicas apart behind Ray's router (host and process id).
        return {"status": "ok", "model": engine.name, "queued": batcher.queued, "running_rows": batcher.running_rows,
                "replica": f"{socket.gethostname()}:{os.getpid()}"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "dllm-cache"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _answer(request, body, body.text(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        text = engine.chat_prompt([m.model_dump(exclude_none=True) for m in body.messages])
        return await _answer(request, body, text, chat=True)

    async def _answer(request: Request, body: SamplingFields, text: str, *, chat: bool):
        t0 = time.monotonic()
        endpoint = request.url.path
        if body.model != engine.name:
            return _error(404, f"model {body.model!r} is not served here; GET /v1/models lists {engine.name!r}",
                          type_="not_found_error", param="model", code="model_not_found")
        ids = engine.encode(text)
        if not ids:
            raise RequestError("the prompt is empty (no tokens); send some text", "prompt")
        decoding, max_tokens = engine.decoding(body, len(ids))
        pending = _Pending(engine, asyncio.get_running_loop(), body.n, body.stop_list())
        job = pending.job = Job(ids, decoding, max_tokens, body.n, emit=pending.emit, fail=pending.fail)
        try:
            batcher.submit(job)
        except (QueueFull, ShuttingDown) as err:
            return _error(503, str(err), type_="server_busy" if isinstance(err, QueueFull) else "shutting_down")
        deadline = t0 + request_timeout_s

        if body.stream:
            return StreamingResponse(_stream(request, pending, job, body, len(ids), chat, t0, deadline),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while not pending.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    job.cancelled.set()
                    return _error(504, f"no answer within the request timeout ({request_timeout_s:g} s)", type_="timeout")
                with contextlib.suppress(asyncio.TimeoutError):
                    await pending.next(min(_POLL_S, left))
                if await request.is_disconnected():  # no wait: reads a pending disconnect message, if any
                    job.cancelled.set()
                    metrics.cancelled.inc()
                    return Response(status_code=499)  # nobody reads it
        except Exception as err:  # noqa: BLE001  (a failed generation is this request's 500, with its reason)
            job.cancelled.set()
            return _error(500, f"generation failed: {type(err).__name__}: {err}", type_="server_error")
        completion = sum(len(c.ids) for c in pending.choices)
        metrics.prompt_tokens.inc(len(ids))
        metrics.completion_tokens.inc(completion)
        metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - t0)
        return completion_body(engine.name, [c.text for c in pending.choices], [c.reason for c in pending.choices],
                               len(ids), completion, chat=chat)

    async def _stream(request: Request, pending: _Pending, job: Job, body: SamplingFields, prompt_tokens: int,
                      chat: bool, t0: float, deadline: float) -> AsyncIterator[str]:
        rid, done = new_request_id(chat), False
        first_sent, closed = [False] * body.n, [False] * body.n  # per choice: a chunk sent; its finish reason sent
        try:
            while not pending.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    yield _sse(error_body(f"no answer within the request timeout ({request_timeout_s:g} s)", type_="timeout"))
                    return
                try:
                    _, index, _, _ = await pending.next(min(_POLL_S, left))
                except asyncio.TimeoutError:
                    index = None
                except Exception as err:  # noqa: BLE001
                    yield _sse(error_body(f"generation failed: {type(err).__name__}: {err}", type_="server_error"))
                    return
                # uvicorn drops what is sent after a disconnect without an error, so ask.
                if await request.is_disconnected():
                    metrics.cancelled.inc()
                    return
                if index is None or closed[index]:
                    continue  # a choice cut by a stop string still runs with its batch: its later blocks are dropped
                # One chunk per completed block, even when its text is empty (ids the tokenizer decodes to nothing,
                # special tokens, a held-back stop-string prefix or split character): the chunk itself tells the
                # client that a block is done, so the time to the first block is the time to the first chunk.
                choice = pending.choices[index]
                text = choice.delta()
                if not any(first_sent):  # once per request, whatever its n
                    metrics.first_block.observe(time.monotonic() - t0)
                yield _sse(chunk_body(rid, engine.name, index, text, choice.reason, chat=chat, first=not first_sent[index]))
                first_sent[index], closed[index] = True, choice.reason is not None
            done = True
            metrics.prompt_tokens.inc(prompt_tokens)
            metrics.completion_tokens.inc(sum(len(c.ids) for c in pending.choices))
            metrics.latency.labels(endpoint=request.url.path).observe(time.monotonic() - t0)
            yield "data: [DONE]\n\n"
        finally:
            if not done:
                job.cancelled.set()  # the client went away (or timed out): free its row

    return app


class _CountRequests:
    """Counts responses by endpoint and status. A plain ASGI middleware: Starlette's BaseHTTPMiddleware
    wraps `receive` so that a handler can no longer see its client disconnect."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in _ENDPOINTS else "other"  # bounded label values

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint=path, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
