"""Replicas on Ray Serve: N copies of the server (one GPU each on CUDA) behind Ray's HTTP proxy and
router. Ray places, restarts and routes; we write no cluster manager. Each replica is the same
FastAPI app with its own model and batcher (`__serve_build_asgi_app__`, Ray Serve's deferred
ingress), so batching happens inside a replica and Ray spreads requests across them.

On a Ray cluster that is already running, set RAY_ADDRESS (as for any Ray program); otherwise a local
one starts.
"""

from __future__ import annotations

import argparse
import os

from .engine import Defaults


class ReplicaServer:
    """One replica: loads the model in the replica's process and serves the FastAPI app there."""

    def __init__(self, options: dict):
        from .app import build_app
        from .engine import load_engine

        self.engine = load_engine(options["model"], device=options["device"], dtype=options["dtype"],
                                  name=options["name"], defaults=options["defaults"], max_n=options["max_n"],
                                  exact_batching=options.get("exact_batching", True))
        self._app = build_app(self.engine, max_batch_size=options["max_batch_size"], max_wait_ms=options["max_wait_ms"],
                              max_queue=options["max_queue"], request_timeout_s=options["request_timeout"],
                              continuous=options.get("continuous", False))

    def __serve_build_asgi_app__(self):
        return self._app


def deployment(options: dict, replicas: int, *, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0):
    """The Ray Serve application of `replicas` ReplicaServers (pass it to serve.run)."""
    from ray import serve

    cls = serve.ingress()(ReplicaServer)
    # Requests a replica accepts before Ray's router queues them: enough to fill a batch twice over,
    # so batches form inside the replica (Ray's default of 5 would cap every batch at 5 rows).
    ongoing = max(2 * options["max_batch_size"], 8)
    dep = serve.deployment(cls, name="dllm_cache", num_replicas=replicas, max_ongoing_requests=ongoing,
                           ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
                           graceful_shutdown_timeout_s=options["request_timeout"])
    return dep.bind(options)


def options_of(args: argparse.Namespace, defaults: Defaults) -> dict:
    return dict(model=args.model, device=args.device, dtype=args.dtype, name=args.served_model_name, defaults=defaults,
                max_n=args.max_n, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                max_queue=args.max_queue, request_timeout=args.request_timeout, continuous=args.continuous,
                exact_batching=args.exact_batching)


def serve_replicas(args: argparse.Namespace, defaults: Defaults) -> int:
    """Start Ray (local, or RAY_ADDRESS), Serve's proxy on --host:--port, and N replicas; block until Ctrl-C."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("dllm-cache serve --replicas needs Ray Serve: pip install \"dllm-cache[serve]\"") from None
    cuda = args.device.startswith("cuda")
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = deployment(options_of(args, defaults), args.replicas, gpus_per_replica=1.0 if cuda else 0.0,
                     cpus_per_replica=1.0 if cuda else 0.5)
    print(f"dllm-cache serve: {args.replicas} Ray Serve replicas on http://{args.host}:{args.port}/v1", flush=True)
    serve.run(app, name="dllm_cache", route_prefix="/", blocking=True)
    return 0
