"""`dllm-cache serve` against a live server on 127.0.0.1: the official openai client, streaming,
batching (answers equal those served alone), disconnects, bad input, metrics, start-up refusals and
graceful shutdown. A tiny random LLaDA with the shipped tokenizer keeps every forward in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from dllm_cache.serving import Defaults, Engine, build_app, load_engine  # noqa: E402
from dllm_cache.serving.server import build_parser  # noqa: E402
from dllm_cache.serving.server import main as serve_main  # noqa: E402
from tests.test_serving_utils import CHAT_TEMPLATE, free_port, live, tiny_model_dir, torch_threads  # noqa: E402

DEFAULTS = Defaults(gen_length=16, block_length=4, steps=8)
PROMPTS = [f"Question: what is {a} + {b}?{' Think.' * (a % 4)}\nAnswer:" for a, b in zip(range(64), range(7, 71))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("serve") / "tiny", chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def engine(model_dir) -> Engine:
    return load_engine(str(model_dir), defaults=DEFAULTS, max_n=4)


@pytest.fixture(scope="module")
def server(engine):
    with torch_threads(1), live(build_app(engine, max_batch_size=16, max_wait_ms=50)) as s:
        yield s


def metric(url: str, name: str) -> float:
    """Sum of a Prometheus sample's values over its labels (0 if absent)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def complete(url: str, **body) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_openai_client_models_completion_chat_and_stream(server, engine):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]

    prompt = PROMPTS[3]
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, extra_body={"cache": "paper"})
    assert out.usage.prompt_tokens == len(engine.encode(prompt))
    assert 0 < out.usage.completion_tokens <= 10 and out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens

    # Streaming: one event per completed block (max_tokens 10 in blocks of 4: 3 blocks), the same text.
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=10, stream=True,
                                            extra_body={"cache": "paper"}))
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert 1 <= len(chunks) <= 3 and chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, n=2)
    assert len(chat.choices) == 2 and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy: n rows agree
    assert chat.usage.prompt_tokens == len(engine.encode(engine.chat_prompt([{"role": "user", "content": "hi"}])))
    streamed = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content


def test_stop_sequence_cuts_the_answer(server):
    full = complete(server.url, prompt=PROMPTS[5], max_tokens=16)
    text = full["choices"][0]["text"]
    stop = text[6:9]
    assert len(stop) == 3 and text.find(stop) >= 1
    cut = complete(server.url, prompt=PROMPTS[5], max_tokens=16, stop=[stop])
    assert cut["choices"][0]["text"] == text[: text.find(stop)] and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]  # the tokens returned, not generated


async def _many(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json={"model": "tiny", **b}) for b in bodies))


def test_64_concurrent_clients_batched_answers_equal_serial(server):
    """Every request answered once, in batches, each answer equal to the same request served alone
    (fp32, CPU): left padding and neighbours do not change a row's tokens."""
    bodies = [{"prompt": p, "max_tokens": 12 + 4 * (i % 2)} for i, p in enumerate(PROMPTS)]
    batches_before = metric(server.url, "dllm_batch_size_count")
    responses = asyncio.run(_many(server.url, bodies))
    batches = metric(server.url, "dllm_batch_size_count") - batches_before
    assert [r.status_code for r in responses] == [200] * 64
    answers = [r.json() for r in responses]
    assert len({a["id"] for a in answers}) == 64
    assert batches <= 16, f"64 requests ran in {batches:g} generations: not batched"
    for body, answer in zip(bodies, answers):  # serially, one request at a time: each one alone in its batch
        alone = complete(server.url, **body)
        assert answer["choices"] == alone["choices"] and answer["usage"] == alone["usage"], body["prompt"]


def test_mixed_settings_in_flight_do_not_mix(server):
    """Requests with different decoding settings arrive together; each runs with its own settings."""
    settings = [{}, {"cache": False}, {"block_length": 8, "steps": 4}, {"threshold": 0.1, "cache": "block-dual"}]
    bodies = [{"prompt": PROMPTS[i], "max_tokens": 16, **settings[i % 4]} for i in range(12)]
    responses = asyncio.run(_many(server.url, bodies))
    for body, r in zip(bodies, responses):
        assert r.status_code == 200 and r.json()["choices"] == complete(server.url, **body)["choices"]


def test_continuous_batching_joins_at_block_boundaries_with_answers_equal_alone(server, engine):
    """With continuous batching, requests join a running batch at block boundaries (4 rows, 12 requests
    arriving over time) and leave when done; each answer equals the request served alone by the static
    batcher. Feature-cache requests are not eligible and still answer (statically)."""
    bodies = [{"prompt": PROMPTS[10 + i], "max_tokens": 32, "steps": 16, "cache": "block-dual" if i < 8 else False}
              for i in range(12)] + [{"prompt": PROMPTS[30], "max_tokens": 16}]
    alone = [complete(server.url, **b)["choices"] for b in bodies]

    async def staggered(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            async def one(i: int, body: dict) -> httpx.Response:
                await asyncio.sleep(0.01 * i)
                return await client.post("/v1/completions", json={"model": "tiny", **body})
            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    with torch_threads(1), live(build_app(engine, max_batch_size=4, max_wait_ms=5, continuous=True)) as s:
        responses = asyncio.run(staggered(s.url))
        joined = metric(s.url, "dllm_joined_requests_total")
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert [r.json()["choices"] for r in responses] == alone
    assert joined > 0, "no request joined a running batch"


def test_threshold_with_the_feature_cache_runs_alone_unless_told_otherwise(server, engine):
    """Such answers could depend on their neighbours (the refresh clock counts the batch's steps), so by
    default each runs in its own batch; --no-exact-batching batches them."""
    bodies = [{"prompt": PROMPTS[40 + i], "max_tokens": 16, "threshold": 0.2} for i in range(4)]
    before = metric(server.url, "dllm_batch_size_count")
    assert all(r.status_code == 200 for r in asyncio.run(_many(server.url, bodies)))
    assert metric(server.url, "dllm_batch_size_count") - before == 4
    loose = Engine(engine.model, engine.tokenizer, name="tiny", defaults=DEFAULTS, exact_batching=False)
    with torch_threads(1), live(build_app(loose, max_wait_ms=200)) as s:
        assert all(r.status_code == 200 for r in asyncio.run(_many(s.url, bodies)))
        assert metric(s.url, "dllm_batch_size_count") < 4


def _wait(pred, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_client_disconnect_frees_its_row(server):
    """A long generation whose only client leaves stops at its next step; the server keeps serving."""
    long = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 256, "steps": 256, "block_length": 4}
    health = lambda: httpx.get(f"{server.url}/health").json()  # noqa: E731
    for stream in (True, False):
        stopped = metric(server.url, "dllm_cancelled_batches_total")
        if stream:
            with httpx.stream("POST", f"{server.url}/v1/completions", json={**long, "stream": True}, timeout=60) as r:
                next(r.iter_lines())  # the first block has arrived: the generation is running
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.url}/v1/completions", json=long, timeout=httpx.Timeout(60, read=0.5))
        assert _wait(lambda s=stopped: metric(server.url, "dllm_cancelled_batches_total") == s + 1), "the batch kept running"
        assert _wait(lambda: health()["running_rows"] == 0)
    assert complete(server.url, prompt=PROMPTS[2], max_tokens=4)["choices"][0]["finish_reason"] in ("length", "stop")


BAD = [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "object"),
    ({}, 400, "model"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "not served"),
    ({"model": "tiny", "prompt": 5}, 400, "prompt"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x " * 600}, 400, "prompt"),
    ({"model": "tiny", "prompt": ""}, 400, "empty"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "one"),
    ({"model": "tiny", "prompt": "x", "n": 50}, 400, "n=50"),
    ({"model": "tiny", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "logprobs": 2}, 400, "not supported"),
    ({"model": "tiny", "prompt": "x", "presence_penalty": 0.5}, 400, "not supported"),
    ({"model": "tiny", "prompt": "x", "frobnicate": 1}, 400, "unknown parameter"),
    ({"model": "tiny", "prompt": "x", "steps": 3}, 400, "multiple"),
    ({"model": "tiny", "prompt": "x", "top_p": 0.5}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "cache": "turbo"}, 400, "preset"),
    ({"model": "tiny", "prompt": "x", "threshold": 2}, 400, "threshold"),
]


def test_bad_input_gets_a_4xx_json_error(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for body, status, words in BAD:
            content = body if isinstance(body, str) else json.dumps(body)
            r = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert words.lower() in err["message"].lower() and err["type"], (body, err)
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "robot", "content": "x"}]})
        assert r.status_code == 400 and "role" in r.json()["error"]["message"]
        assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
        assert client.get("/health").json()["status"] == "ok"  # still serving


def test_chat_without_template_is_a_clear_400(engine):
    import copy

    tok = copy.deepcopy(engine.tokenizer)
    tok.chat_template = None
    bare = Engine(engine.model, tok, name="tiny", defaults=DEFAULTS)
    with torch_threads(1), live(build_app(bare)) as s:
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]


def test_request_timeout_is_a_504_and_a_full_queue_a_503(engine):
    """Both clear JSON errors, and the server serves on."""
    long = {"model": "tiny", "prompt": PROMPTS[4], "max_tokens": 256, "steps": 256}
    with torch_threads(1), live(build_app(engine, max_queue=1, request_timeout_s=0.5)) as s:
        r = httpx.post(f"{s.url}/v1/completions", json=long, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        responses = asyncio.run(_many(s.url, [long] * 4))
        codes = sorted(r.status_code for r in responses)
        assert 503 in codes and set(codes) <= {503, 504}, codes
        assert all("error" in r.json() for r in responses)
        assert httpx.get(f"{s.url}/health").json()["status"] == "ok"


def test_a_failed_generation_is_a_500_json_error_not_a_hang(engine):
    broken = Engine(engine.model, engine.tokenizer, name="tiny", defaults=DEFAULTS)

    def run(jobs):
        raise RuntimeError("simulated device failure")

    broken.run = run
    with torch_threads(1), live(build_app(broken)) as s:
        for stream in (False, True):
            r = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "x", "stream": stream}, timeout=30)
            body = r.json() if not stream else json.loads(r.text.split("data: ", 1)[1])
            assert (r.status_code == 500 or stream) and "simulated device failure" in body["error"]["message"]
        assert httpx.get(f"{s.url}/health").json()["status"] == "ok"


def test_metrics_are_prometheus_text(server):
    complete(server.url, prompt=PROMPTS[0], max_tokens=8)
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("dllm_requests_total{", "dllm_prompt_tokens_total", "dllm_completion_tokens_total", "dllm_queue_length",
                 "dllm_batch_size_bucket", "dllm_request_latency_seconds_bucket", "dllm_time_to_first_block_seconds",
                 'dllm_cache_steps_total{kind="partial"}', 'dllm_cache_steps_total{kind="full"}'):
        assert name in text, name
    assert metric(server.url, "dllm_completion_tokens_total") > 0
    before = metric(server.url, "dllm_time_to_first_block_seconds_count")
    body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 8, "n": 2, "stream": True}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert metric(server.url, "dllm_time_to_first_block_seconds_count") == before + 1  # one request, n = 2


def test_dream_family_serves(tmp_path):
    engine = load_engine(str(tiny_model_dir(tmp_path / "dream", family="dream")), name="tiny", defaults=DEFAULTS)
    assert engine.family == "dream"
    with torch_threads(1), live(build_app(engine)) as s:
        out = complete(s.url, prompt="hello", max_tokens=8, top_p=0.9)
        assert out["usage"]["completion_tokens"] <= 8


def test_help_lists_every_option_with_its_default():
    text = build_parser().format_help()
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text
    assert text.count("(default:") == len([a for a in build_parser()._actions if a.dest != "help"])


def test_refuses_to_start_with_one_clear_line(tmp_path, model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="port .* is taken"):
            serve_main(["--model", str(model_dir), "--port", str(taken.getsockname()[1])])
    with pytest.raises(SystemExit, match="no config.json"):
        serve_main(["--model", str(tmp_path / "nowhere"), "--port", str(free_port())])
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "not_a_diffusion_lm"}))
    with pytest.raises(SystemExit, match="unsupported model family") as err:
        serve_main(["--model", str(odd), "--port", str(free_port())])
    assert "\n" not in str(err.value)


def test_graceful_shutdown_finishes_in_flight_requests(model_dir):
    """SIGTERM to a real `dllm-cache serve` process while a request runs: the request is answered in
    full, then the process exits."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dllm_cache.cli", "serve", "--model", str(model_dir), "--port",
                             str(port), "--gen-length", "16", "--block-length", "4", "--steps", "8", "--log-level",
                             "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None
        assert _wait(up, 120) and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "no start"
        result: dict = {}

        def call() -> None:
            result["r"] = httpx.post(f"{url}/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": PROMPTS[0], "max_tokens": 128, "steps": 128})

        caller = threading.Thread(target=call)
        caller.start()
        assert _wait(lambda: httpx.get(f"{url}/health").json()["running_rows"] > 0, 30)
        proc.send_signal(signal.SIGTERM)
        caller.join(60)
        # uvicorn re-raises the signal once it has shut down, so the exit status is SIGTERM's.
        assert proc.wait(60) in (0, -signal.SIGTERM)
        r = result["r"]
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
