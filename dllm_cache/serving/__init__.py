"""Serving: an OpenAI-compatible HTTP server over the cache (`dllm-cache serve`).

One idea per module: `protocol` (request/response bodies, validation), `engine` (the model, decoding
settings, one batched generation with block-by-block output), `batcher` (dynamic batching on the
event loop, one worker thread), `metrics` (Prometheus), `app` (the FastAPI routes), `server` (the
command line, start-up checks, uvicorn) and `replicas` (Ray Serve). Needs the `serve` extra; nothing
here is imported by `import dllm_cache`.
"""

from .engine import CACHE_PRESETS, Defaults, Engine, load_engine

__all__ = ["CACHE_PRESETS", "Defaults", "Engine", "build_app", "load_engine"]


def build_app(*args, **kwargs):
    """dllm_cache.serving.app.build_app, imported on use (FastAPI is an optional dependency)."""
    from .app import build_app as _build

    return _build(*args, **kwargs)
