"""Helpers of the server tests (no tests here): a tiny model folder with a real tokenizer, and a live
uvicorn server on 127.0.0.1 in a thread of the test process (no second torch import to pay for).

The tiny model is a random 3-layer LLaDA with the shipped model's vocabulary (2000 tokens), saved
with the shipped tokenizer, so requests go through text -> tokens -> text as in production while a
forward costs milliseconds on CPU.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from dllm_cache import shipped
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from tests.helpers import torch_threads  # noqa: F401  (re-exported: the serving tests import it from here)

# A minimal Jinja chat template (the shipped tokenizer has none): enough to test the chat route.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_model_dir(path: Path, *, family: str = "llada", chat_template: str | None = None, seed: int = 0) -> Path:
    """Save a tiny random model with the shipped tokenizer into `path` and return it."""
    torch.manual_seed(seed)
    ids = dict(vocab_size=2000, mask_token_id=2, pad_token_id=0, eos_token_id=1)
    model = tiny_llada(embedding_size=2000, **ids) if family == "llada" else tiny_dream(bos_token_id=3, **ids)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shipped.default_model_dir() / name, path / name)
    if chat_template is not None:
        (path / "chat_template.jinja").write_text(chat_template)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app, timeout_graceful_shutdown: int = 30):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=timeout_graceful_shutdown)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def live(app, **kw) -> Iterator[LiveServer]:
    server = LiveServer(app, **kw).start()
    try:
        yield server
    finally:
        server.stop()


