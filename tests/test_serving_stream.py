"""Streaming sends each block when it completes, batched and cached alike (issue 26: on the GPU bench the
"first block" arrived with the last one).

The cause was blocks whose text is empty: a random checkpoint's ids mostly lie beyond its byte tokenizer
and decode to nothing, and the server sent a chunk only when it had text, so the first chunk came with
the finish reason at the end. The model here reproduces that on purpose (a tiny random LLaDA with a 4096-id
vocabulary and the 259-token byte tokenizer, the output rows of every id the tokenizer knows zeroed, so no
answer token has text). The check is by event order, not wall time: a pre-hook on the model holds the
generation at the first forward of the last block until every client has received its first chunk (or a
generous timeout passes, which only a failing server waits out).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402

from dllm_cache.serving import Defaults, Engine, build_app, load_engine  # noqa: E402
from tests.helpers import byte_tokenizer  # noqa: E402
from tests.test_serving_utils import live, torch_threads  # noqa: E402

GEN, BLOCK = 16, 4  # 4 blocks of 4 tokens, 2 steps each
GATE_TIMEOUT_S = 15.0  # only a server that holds blocks back waits this out


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    from dllm_cache.models.tiny import tiny_llada

    tok = byte_tokenizer()
    model = tiny_llada(seed=1, vocab_size=4096, embedding_size=4096, mask_token_id=tok.mask_token_id,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.no_grad():  # no id the tokenizer can decode (nor the end token) ever wins the argmax
        model.model.transformer.ff_out.weight[: len(tok)] = 0
    path: Path = tmp_path_factory.mktemp("stream") / "empty-text"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return load_engine(str(path), name="tiny", defaults=Defaults(gen_length=GEN, block_length=BLOCK, steps=8))


class LastBlockGate:
    """A forward pre-hook that stops the generation at the first forward of its last block until `open()`."""

    def __init__(self, mask_id: int):
        self.mask_id = mask_id
        self.opened = threading.Event()
        self.reached = 0  # generations that reached their last block
        self.in_time: list[bool] = []  # per generation: the gate was open (all first chunks received) in time

    def __call__(self, _module, args, kwargs) -> None:
        x = args[0] if args else kwargs["input_ids"]  # (rows, P + GEN)
        earlier, last = x[:, -GEN:-BLOCK] == self.mask_id, x[:, -BLOCK:] == self.mask_id
        if not earlier.any() and last.all():
            self.reached += 1
            self.in_time.append(self.opened.wait(GATE_TIMEOUT_S))


async def _streams(url: str, bodies: list[dict], gate: LastBlockGate) -> list[list[dict]]:
    """Stream every body at once; open the gate once each stream has its first chunk."""
    firsts = 0

    async def one(client: httpx.AsyncClient, body: dict) -> list[dict]:
        nonlocal firsts
        chunks = []
        async with client.stream("POST", "/v1/completions", json={"model": "tiny", "stream": True, **body}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:])["choices"][0])
                    if len(chunks) == 1:
                        firsts += 1
                        if firsts == len(bodies):
                            gate.opened.set()
        return chunks

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(one(client, b) for b in bodies))


@pytest.mark.parametrize("cache,rows", [("none", 3), ("default", 1), ("default", 3)])
def test_first_block_arrives_before_the_last_block_starts(engine, cache, rows):
    gate = LastBlockGate(engine.mask_id)
    handle = engine.model.register_forward_pre_hook(gate, with_kwargs=True)
    bodies = [{"prompt": f"Request {i}: alpha bravo", "max_tokens": GEN, "cache": cache} for i in range(rows)]
    try:
        # a batch starts once it is full (max_batch_size = rows), so the rows share one generation whatever the load
        with torch_threads(1), live(build_app(engine, max_batch_size=rows, max_wait_ms=10_000)) as s:
            streams = asyncio.run(_streams(s.url, bodies, gate))
    finally:
        handle.remove()
    assert gate.reached == 1, f"expected one generation to reach its last block, got {gate.reached}"
    assert gate.in_time[0], "the first chunks arrived only after the last block began: blocks are held back"
    for chunks in streams:  # one chunk per block, text empty (the case the server used to hold back), finish at the end
        assert len(chunks) == GEN // BLOCK and [c["finish_reason"] for c in chunks] == [None] * 3 + ["length"]
        assert "".join(c["text"] for c in chunks) == ""


def test_a_choice_cut_by_a_stop_string_finishes_once(tmp_path):
    """n=2 sampled rows: when one choice hits its stop string blocks before the other ends, its row keeps
    running with the batch; its later blocks must not be streamed (the server used to repeat its finish chunk
    once per later block)."""
    from tests.test_serving_utils import tiny_model_dir

    engine = load_engine(str(tiny_model_dir(tmp_path / "tiny")), name="tiny", defaults=Defaults(gen_length=32, block_length=4,
                                                                                                steps=16), max_n=2)
    body = {"model": "tiny", "prompt": "Question: 1 + 2?\nAnswer:", "max_tokens": 32, "n": 2, "temperature": 1.0}
    with torch_threads(1), live(build_app(engine)) as s:
        for seed in range(8):  # a seed whose first choice stops (at its 3rd character) while the second runs on
            full = httpx.post(f"{s.url}/v1/completions", json={**body, "seed": seed}, timeout=60).json()["choices"]
            stop = full[0]["text"][2:4]
            if len(stop) == 2 and stop not in full[1]["text"] and full[1]["finish_reason"] == "length":
                break
        else:
            pytest.fail("no seed of 8 gave a choice that stops while the other runs on; widen the search")
        r = httpx.post(f"{s.url}/v1/completions", json={**body, "seed": seed, "stop": [stop], "stream": True}, timeout=60)
    events = [json.loads(line[6:])["choices"][0] for line in r.text.splitlines() if line.startswith("data: {")]
    for index in (0, 1):
        mine = [e for e in events if e["index"] == index]
        assert [e["finish_reason"] is not None for e in mine].count(True) == 1 and mine[-1]["finish_reason"], mine
    assert "".join(e["text"] for e in events if e["index"] == 0) == full[0]["text"][: full[0]["text"].find(stop)]
    assert r.text.rstrip().endswith("data: [DONE]")
