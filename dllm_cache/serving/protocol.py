"""The wire format: OpenAI-compatible request and response bodies, and the JSON error they share.

Requests are validated here, before anything reaches the model, so a malformed one is a 400 that
names the field instead of a 500 from deep inside a sampler. Fields the OpenAI API has but a
diffusion sampler cannot honour (logprobs, penalties, ...) are refused by name rather than ignored:
a client that asks for them would otherwise get an answer that silently is not what it asked for.
Diffusion settings ride along as extra body fields (`extra_body=` in the openai client).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

# OpenAI parameters we know and refuse: a sampler that denoises a whole block at once has no
# per-token log-probabilities, no repetition penalties over a left-to-right history, no echo.
UNSUPPORTED = {
    "logprobs": "diffusion samplers unmask tokens out of order and report no per-token log-probabilities",
    "top_logprobs": "diffusion samplers report no per-token log-probabilities",
    "echo": "the prompt is not returned",
    "best_of": "use n (every row is returned)",
    "presence_penalty": "the samplers have no repetition penalties",
    "frequency_penalty": "the samplers have no repetition penalties",
    "logit_bias": "the samplers take no logit bias",
    "suffix": "infilling is not served",
    "tools": "tool calls are not served",
    "tool_choice": "tool calls are not served",
    "functions": "tool calls are not served",
    "function_call": "tool calls are not served",
    "response_format": "constrained decoding is not served",
    "stream_options": "usage is not sent in streams; read it from a non-streamed call",
}
# Accepted and without effect on the answer (bookkeeping fields clients send).
IGNORED = ("user", "metadata", "store", "service_tier")


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Base(BaseModel):
    # Strict types: "max_tokens": "16" is a wrong type, not a number to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"the request body must be a JSON object, got {type(data).__name__}")
        for name, why in UNSUPPORTED.items():
            value = data.get(name)
            if name in data and value not in (None, False, 0, 0.0, [], {}):
                raise ValueError(f"parameter {name!r} is not supported by this server: {why}")
        return {k: v for k, v in data.items() if k not in UNSUPPORTED and k not in IGNORED}


class SamplingFields(_Base):
    """What both endpoints take: the OpenAI sampling fields plus the diffusion extras."""

    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, description="tokens to generate; None = the server's --gen-length")
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0)
    top_p: StrictFloat | StrictInt | None = Field(default=None, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = None
    stream: StrictBool = False
    # Diffusion extras (extra_body): the server's defaults when absent.
    steps: StrictInt | None = Field(default=None, ge=1, description="denoising steps for the whole answer")
    block_length: StrictInt | None = Field(default=None, ge=1, description="semi-autoregressive block length")
    threshold: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1,
                                                      description="parallel decoding: unmask every token above it")
    cache: StrictBool | StrictStr | None = Field(default=None, description="true/false or a preset name")

    @model_validator(mode="after")
    def _check(self) -> SamplingFields:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError(f"stop takes at most 4 sequences, got {len(self.stop)}")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr]

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError(f"prompt must be a string or a list of exactly one string, got a list of {len(self.prompt)}; "
                             "send one request per prompt (concurrent requests are batched)")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(_Base):
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr
    name: StrictStr | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(model: str, texts: list[str], reasons: list[str], prompt_tokens: int, completion_tokens: int,
                    *, chat: bool) -> dict:
    """A whole (non-streamed) answer with one choice per row."""
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
    else:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
    return {"id": _id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(request_id: str, model: str, index: int, text: str | None, reason: str | None, *, chat: bool,
               first: bool = False) -> dict:
    """One streamed event: a choice's new text (a completed block), or its finish reason."""
    if chat:
        delta: dict = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}


def new_request_id(chat: bool) -> str:
    return _id("chatcmpl" if chat else "cmpl")
