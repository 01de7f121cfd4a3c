"""Replicas on Ray Serve (`dllm-cache serve --replicas N`) on a local 2-CPU Ray cluster: both replicas
answer, and a replica killed under load loses no request that the client retries (or the client gets
a clear 503). Costs ~30-40 s on a 2-core runner (Ray's start-up, two replicas importing torch), the
price of testing the real router; everything else about the server is tested in test_serving.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from dllm_cache.serving.engine import Defaults  # noqa: E402
from dllm_cache.serving.replicas import deployment  # noqa: E402
from tests.test_serving_utils import free_port, tiny_model_dir  # noqa: E402

RETRIES = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory.mktemp("ray") / "tiny")
    options = dict(model=str(model), device="cpu", dtype="float32", name="tiny",
                   defaults=Defaults(gen_length=16, block_length=4, steps=8), max_n=2, max_batch_size=8,
                   max_wait_ms=10, max_queue=256, request_timeout=60)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster needs no token
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(options, 2, cpus_per_replica=0.5), name="dllm_cache", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


FAILURES: list[str] = []  # what the client saw before a retry (for the report when the test fails)


async def _with_retries(client: httpx.AsyncClient, body: dict) -> tuple[int, int]:
    """(final status, attempts): retry what a dead replica leaves behind (transport errors, 5xx)."""
    for attempt in range(1, RETRIES + 1):
        try:
            r = await client.post("/v1/completions", json=body)
        except httpx.TransportError as err:
            FAILURES.append(type(err).__name__)
            continue
        if r.status_code >= 500:
            FAILURES.append(f"{r.status_code} {r.text[:80]}")
        if r.status_code == 200 or r.status_code < 500:
            return r.status_code, attempt
        if r.status_code == 503 and attempt == RETRIES:
            assert r.headers.get("content-type", "").startswith(("application/json", "text/plain")) and r.text
            return 503, attempt
        await asyncio.sleep(0.5)
    return -1, RETRIES


def test_two_replicas_answer_and_survive_a_killed_one(cluster):
    replicas = {httpx.get(f"{cluster}/health", timeout=30).json()["replica"] for _ in range(30)}
    assert len(replicas) == 2, replicas

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert len(names) == 2, names
    bodies = [{"model": "tiny", "prompt": f"Question: {i} + {i}?\nAnswer:", "max_tokens": 64, "steps": 64}
              for i in range(24)]

    async def load() -> list[tuple[int, int]]:
        async with httpx.AsyncClient(base_url=cluster, timeout=60) as client:
            tasks = [asyncio.create_task(_with_retries(client, b)) for b in bodies]
            await asyncio.sleep(0.5)  # requests are in flight on both replicas
            ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=False)
            return await asyncio.gather(*tasks)

    results = asyncio.run(load())
    statuses = [s for s, _ in results]
    # Every request answered: retried where its replica died (a clear 503 only if retries ran out).
    assert all(s in (200, 503) for s in statuses) and statuses.count(200) >= len(bodies) - 1, (statuses, FAILURES)
    # The kill landed under load: some requests failed on the dead replica and were retried.
    assert FAILURES, "no request saw the killed replica: the kill came after the load"
