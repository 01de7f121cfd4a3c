"""`dllm-cache serve`: its options, the start-up checks, and uvicorn (one process) or Ray Serve (replicas).

Start-up refuses with one line, before any weights are read where it can, when the port is taken,
the model path is wrong or the model family is one the cache does not serve.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

import torch

from .engine import CACHE_PRESETS, DTYPES, Defaults


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dllm-cache serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /health, "
                    "/metrics) that batches concurrent requests through the cache. Needs `pip install "
                    "\"dllm-cache[serve]\"`.")
    p.add_argument("--model", default=None, help="local model directory with its tokenizer; None = the small trained "
                   "LLaDA shipped with the package")
    p.add_argument("--served-model-name", default=None, help="the model id clients pass; None = 'shipped' for the "
                   "shipped model, else the directory's name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (cuda, cuda:1, cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model dtype")
    p.add_argument("--cache", default="default", choices=list(CACHE_PRESETS),
                   help="cache preset of requests that do not choose one ('default' = CacheConfig(), 'none' = uncached)")
    p.add_argument("--gen-length", type=_positive, default=Defaults.gen_length, help="max_tokens of requests without one")
    p.add_argument("--block-length", type=_positive, default=Defaults.block_length, help="semi-AR block length")
    p.add_argument("--steps", type=_positive, default=Defaults.steps,
                   help="denoising steps for --gen-length tokens (other lengths keep the tokens per step)")
    p.add_argument("--threshold", type=_probability, default=None,
                   help="parallel decoding threshold (unmask every token whose confidence exceeds it); None = fixed steps")
    p.add_argument("--max-batch-size", type=_positive, default=16, help="most rows in one batched generation")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long the first request of a batch waits for compatible ones")
    p.add_argument("--continuous", action="store_true",
                   help="continuous batching: requests join a running batch at block boundaries (LLaDA family, fixed "
                        "steps, greedy, a block cache policy; other requests batch statically)")
    p.add_argument("--exact-batching", action=argparse.BooleanOptionalAction, default=True,
                   help="requests whose batched answer could differ from their answer alone (threshold decoding with "
                        "the feature cache) run one per batch; --no-exact-batching batches them for throughput")
    p.add_argument("--max-queue", type=_positive, default=1024, help="waiting requests beyond this get a 503")
    p.add_argument("--max-n", type=_positive, default=8, help="most choices (n) per request")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queue included (then a 504); also the graceful-shutdown limit")
    p.add_argument("--replicas", type=_positive, default=1,
                   help="1 = one process; N > 1 = N Ray Serve replicas behind Ray's HTTP proxy (one GPU each on cuda)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")
    return p


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (uvicorn would fail after the model loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise SystemExit(f"dllm-cache serve: cannot listen on {host}:{port}: {err.strerror}") from None
    return False


def defaults_of(args: argparse.Namespace) -> Defaults:
    if args.gen_length % args.block_length:
        raise SystemExit(f"dllm-cache serve: --gen-length {args.gen_length} must be a multiple of --block-length "
                         f"{args.block_length}")
    blocks = args.gen_length // args.block_length
    if args.steps % blocks:
        raise SystemExit(f"dllm-cache serve: --steps {args.steps} must be a multiple of the number of blocks ({blocks})")
    return Defaults(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                    threshold=args.threshold, cache=args.cache)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise SystemExit(f"dllm-cache serve needs the serve extra ({err.name} is missing): "
                         "pip install \"dllm-cache[serve]\"") from None
    defaults = defaults_of(args)
    if port_taken(args.host, args.port):
        raise SystemExit(f"dllm-cache serve: port {args.port} on {args.host} is taken (another server?); "
                         "stop it or pass --port")
    if args.replicas > 1:
        from .replicas import serve_replicas

        return serve_replicas(args, defaults)
    from .app import build_app
    from .engine import load_engine

    engine = load_engine(args.model, device=args.device, dtype=args.dtype, name=args.served_model_name,
                         defaults=defaults, max_n=args.max_n, exact_batching=args.exact_batching)
    app = build_app(engine, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    request_timeout_s=args.request_timeout, continuous=args.continuous)
    print(f"dllm-cache serve: model {engine.name!r} ({engine.family}, {args.dtype}, {args.device}) on "
          f"http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(args.request_timeout))
    return 0
