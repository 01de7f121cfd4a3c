"""Load benchmark of `dllm-cache serve`: N concurrent streaming clients (asyncio + httpx), per cache
setting: generated tokens/s, p50/p99 latency, time to the first streamed block, completed vs errors.

Writes eval/results/serving.json ({"device", "model", "rows": [{"concurrency", "cache", "requests",
"completed", "errors", "tokens_per_s", "p50_latency_s", "p99_latency_s", ...}], ...}), a markdown
table (serving.md) and a plot (serving.png) beside it.

    # GPU: LLaDA-8B shape, random bf16 weights (compute does not depend on weight values), fixed steps
    # at ~3 tokens per step (LLaDA-8B-Instruct's rate at threshold 0.9), uncached vs the default cache:
    python -m eval.serving --shape llada-8b --device cuda --dtype bfloat16 --concurrency 1 4 16 64 \\
        --caches none default --gen-length 256 --block-length 32 --tokens-per-step 3 --direct --agreement 16
    # any running server (then --direct is not measured):
    python -m eval.serving --url http://127.0.0.1:8000 --concurrency 1 4

Closed loop: each of the N clients sends --requests-per-client requests one after another, so the
server sees N in flight. Tokens/s counts the tokens the server returned (its /metrics counter, so
streamed answers count exactly) over the wall time of the run. `--direct` also times one direct
`generate()` call per cache setting in this process, with the same prompt and settings: the target is
concurrency-1 latency within 10% of it. Only 127.0.0.1 is used for a server it starts.

`--from-raw FILE` measures nothing: it rewrites a recorded run (a result file, e.g. one kept verbatim in
eval/results/serving_raw/ from a GPU call cut by its time limit) through the same result and table writers,
given that run's own arguments (so the settings and the rows it was asked for are that run's); a cut run stays
marked incomplete and the table says which rows are missing:

    python -m eval.serving --shape llada-8b --device cuda --dtype bfloat16 --concurrency 1 4 16 64 \\
        --caches none default --direct --agreement 16 --from-raw eval/results/serving_raw/h200_run1.json --note "..."

Time to the first block: the server sends one chunk per completed block, its text possibly empty, so the first
chunk times the first block (`p50_first_block_s`, and `p50_first_block_share` of the latency: ~1/blocks for one
request alone) and the first chunk with text the first visible text (`p50_first_text_s`). With a random checkpoint
and its byte tokenizer they differ: nearly every id of a real vocabulary (126k for LLaDA-8B) is beyond the
tokenizer's 259 and decodes to nothing. Results written before this (eval/results/serving_raw/h200_run1.json) took
the first chunk with text, and the server then sent no chunk for an empty block: their "first block" is the first
text. `--chunk-times` keeps every request's chunk arrival times in its row ("streams"), to see how the blocks of one
answer arrive.

`--prompt-set arith-drill` sends the shipped model's symbol drills (1-6 operations): its answers end at its end
token after ~5-55 tokens, so rows of one batch (one batch key) finish at different blocks, the load where
continuous batching can gain (eval/serving/continuous_gain.py compares the server with and without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parents[1] / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(count: int, length: int) -> list[str]:
    """Distinct prompts of about `length` characters (one token per byte with the random checkpoint's
    byte tokenizer; fewer with a real tokenizer)."""
    words = ("alpha", "bravo", "delta", "gamma", "omega", "sigma", "kappa", "theta")
    out = []
    for i in range(count):
        text = f"Request {i}:"
        j = i
        while len(text) < length:
            text += " " + words[j % len(words)]
            j = j * 7 + 3
        out.append(text[:length])
    return out


def drill_prompts(count: int, seed: int = 20261203) -> list[str]:
    """`count` prompts of the shipped model's arithmetic drill format ("Question: 26 * 3 , - 20 ?\\nAnswer:")
    with 1-6 operations in turn: its answers ("26 * 3 = 78. 78 - 20 = 58.\\n#### 58" and the end token) are
    ~5-55 tokens long, so with gen 64 and block 16 the rows of one batch end in different blocks (the drills are
    a training-only format of eval/tiny/tasks.py; what the model answers does not matter to a load test)."""
    import random

    from eval.tiny.tasks import arith_prompt, make_arith_drill

    rng = random.Random(seed)
    return [arith_prompt(make_arith_drill(rng, n_ops=1 + i % 6)["question"]) for i in range(count)]


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between order statistics (numpy's default): the p50 of two
    requests is their mean, not the faster one (rounded nearest rank, used before 2026-12-03, gave that)."""
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 100 * q))


async def _one(client: httpx.AsyncClient, body: dict) -> dict:
    """One streamed completion: {"ok", "latency_s", "first_block_s", "first_text_s", "chunks"}.

    The server sends one chunk per completed block, its text possibly empty (a block of ids the tokenizer
    decodes to nothing: with a random checkpoint's byte tokenizer, ~all of LLaDA-8B's 126k ids), so the
    first chunk times the first block and the first chunk with text times the first visible text; they
    differ only when early blocks decode to nothing. `chunks`: [seconds since the request was sent,
    characters of text, finish reason] per chunk, as they arrived."""
    t0 = time.perf_counter()
    rec: dict = {"ok": False, "latency_s": None, "first_block_s": None, "first_text_s": None, "chunks": []}

    def close(ok: bool) -> dict:
        rec["ok"], rec["latency_s"] = ok, time.perf_counter() - t0
        return rec

    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return close(False)
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return close(True)
                now = time.perf_counter() - t0
                event = json.loads(line[6:])
                if "error" in event:
                    return close(False)
                choice = event["choices"][0]
                text = choice.get("text") or ""
                rec["chunks"].append([now, len(text), choice.get("finish_reason")])
                if rec["first_block_s"] is None:
                    rec["first_block_s"] = now
                if text and rec["first_text_s"] is None:
                    rec["first_text_s"] = now
            return close(False)  # the stream ended without [DONE]
    except httpx.HTTPError:
        return close(False)


def completion_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("dllm_completion_tokens_total"))


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process (every thread) has used so far, from /proc (Linux); None elsewhere.
    On a shared CPU the server's tokens per CPU second move far less with other processes' load than its
    tokens per wall second: a second view of the same run."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15 of stat)


async def run_level(url: str, model: str, concurrency: int, per_client: int, cache: str, texts: list[str],
                    settings: dict, mixed: bool = False, server_pid: int | None = None, chunk_times: bool = False) -> dict:
    """One row: `concurrency` clients x `per_client` requests with one cache setting. With `server_pid` (a
    server this script started) the row also has the server's CPU seconds and tokens per CPU second. With
    `chunk_times` the row keeps every request's chunk arrival times ("streams", see _one): how far apart
    the blocks of one answer arrive, to tell a server that holds blocks back from one whose blocks are empty."""
    bodies = [{"model": model, "prompt": texts[i % len(texts)], "stream": True, "cache": cache, **settings}
              for i in range(concurrency * per_client)]
    if mixed:  # answers of 1/4, 1/2 and all of max_tokens (steps scaled alike); the server batches each length
        # apart (gen_length is in Decoding.batch_key), so this mixes batches, not rows of one batch
        for i, body in enumerate(bodies):
            part = (4, 2, 1)[i % 3]
            body["max_tokens"] = max(settings["block_length"], settings["max_tokens"] // part)
            body["steps"] = max(1, settings["steps"] // part)
    results: list[dict] = []

    async def client_loop(k: int, client: httpx.AsyncClient, start: float) -> None:
        for i in range(per_client):
            sent = time.perf_counter() - start
            results.append(await _one(client, bodies[k * per_client + i]) | {"client": k, "sent_s": sent})

    tokens_before, cpu_before = completion_tokens(url), cpu_seconds(server_pid)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600.0), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(k, client, t0) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    tokens = completion_tokens(url) - tokens_before
    cpu = None if cpu_before is None or (after := cpu_seconds(server_pid)) is None else after - cpu_before
    ok = [r for r in results if r["ok"]]
    latencies = [r["latency_s"] for r in ok]
    firsts = [r["first_block_s"] for r in ok if r["first_block_s"] is not None]
    texts_first = [r["first_text_s"] for r in ok if r["first_text_s"] is not None]
    shares = [r["first_block_s"] / r["latency_s"] for r in ok if r["first_block_s"] is not None and r["latency_s"]]
    row = {"concurrency": concurrency, "cache": cache, "requests": len(bodies), "completed": len(ok),
           "errors": len(bodies) - len(ok), "tokens_per_s": tokens / wall if wall else None,
           "p50_latency_s": percentile(latencies, 0.5), "p99_latency_s": percentile(latencies, 0.99),
           "mean_latency_s": statistics.fmean(latencies) if latencies else None,
           "p50_first_block_s": percentile(firsts, 0.5), "p50_first_text_s": percentile(texts_first, 0.5),
           "p50_first_block_share": percentile(shares, 0.5),
           "p50_chunks_per_request": percentile([len(r["chunks"]) for r in ok], 0.5),
           "wall_s": wall, "completion_tokens": tokens,
           "server_cpu_s": cpu, "tokens_per_server_cpu_s": tokens / cpu if cpu else None}
    if chunk_times:
        row["streams"] = results
    return row


async def agreement(url: str, model: str, cache: str, texts: list[str], settings: dict) -> float:
    """Fraction of answers that are the same batched (all sent at once) as served alone (one at a time).
    In fp32 on CPU they are equal (tests/test_serving.py); in bf16 the padding and batch shape change
    the rounding, and this measures by how much that moves tokens."""
    bodies = [{"model": model, "prompt": t, "cache": cache, **settings} for t in texts]
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600.0)) as client:
        together = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        alone = [await client.post("/v1/completions", json=b) for b in bodies]
    same = [a.status_code == b.status_code == 200 and a.json()["choices"] == b.json()["choices"] for a, b in zip(together, alone)]
    return sum(same) / len(same)


def direct_latency(model_dir: str, device: str, dtype: str, cache: str, text: str, settings: dict, repeats: int = 3) -> float:
    """Median seconds of one direct generate() call (batch 1) with the server's settings: the baseline
    of the concurrency-1 latency target."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from dllm_cache.engine.patch import cache_enabled
    from dllm_cache.sampling.generate import generate
    from dllm_cache.serving.engine import CACHE_PRESETS, DTYPES
    from dllm_cache.shipped import ready_model_dir

    model_dir = str(ready_model_dir(model_dir))  # the shipped models' packed weights: their unpacked copy, as the server loads
    model = AutoModel.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=device)
    kw = dict(gen_length=settings["max_tokens"], steps=settings["steps"], block_length=settings["block_length"],
              stop_at_eos=True)

    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        config = CACHE_PRESETS[cache]
        if config is None:
            generate(model, ids, **kw)
        else:
            with cache_enabled(model, config):
                generate(model, ids, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once()  # warm-up
    times = [once() for _ in range(repeats)]
    return statistics.median(times)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def start_server(model_dir: str, args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dllm_cache.cli", "serve", "--model", model_dir, "--served-model-name", "bench",
           "--host", "127.0.0.1", "--port", str(port), "--device", args.device, "--dtype", args.dtype,
           "--gen-length", str(args.gen_length), "--block-length", str(args.block_length),
           "--steps", str(steps_of(args)), "--max-batch-size", str(args.max_batch_size or max(args.concurrency)),
           "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"] + (["--continuous"] if args.continuous else [])
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serving_bench: the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"serving_bench: the server did not answer within {args.start_timeout} s")


def steps_of(args: argparse.Namespace) -> int:
    blocks = args.gen_length // args.block_length
    return max(blocks, round(args.gen_length / args.tokens_per_step / blocks) * blocks)


def write_outputs(result: dict, out: Path, plot: bool = True) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Serving benchmark: {result['model']} on {result['device']}", "", f"`{result['command']}`", "",
             "| cache | concurrency | requests | completed | errors | tokens/s | p50 latency (s) | p99 latency (s) | "
             "p50 first block (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    if result.get("from_raw"):
        lines[4:4] = [f"Rows as recorded in `{result['from_raw']}`, written here by `--from-raw` (nothing re-measured).", ""]
    for row in result["rows"]:
        lines.append(f"| {row['cache']} | {row['concurrency']} | {row['requests']} | {row['completed']} | {row['errors']} | "
                     f"{f(row['tokens_per_s'], 1)} | {f(row['p50_latency_s'])} | {f(row['p99_latency_s'])} | "
                     f"{f(row['p50_first_block_s'])} |")
    for row in result.get("direct", []):
        lines.append(f"\nDirect generate() at batch 1, cache {row['cache']}: {row['latency_s']:.3f} s")
    for row in result.get("batch_agreement", []):
        lines.append(f"\nBatched vs alone, cache {row['cache']}: {row['identical_fraction']:.0%} of {row['prompts']} "
                     "answers identical")
    if not result.get("complete", True):
        lacking = missing(result)
        lines.append("\n**Incomplete run.** " + (f"Not measured: {'; '.join(lacking)}." if lacking else
                                                  "Every requested row was measured, but the run did not finish.")
                     + (f" {result['note']}" if result.get("note") else ""))
    elif result.get("note"):
        lines.append(f"\n{result['note']}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if plot:
        draw(result, out.with_suffix(".png"))


def missing(result: dict) -> list[str]:
    """What the run's arguments asked for (result["requested"]) and its rows lack, in words: the rows per
    cache setting, the direct generate() timings, the batched-vs-alone agreement. Empty when nothing is
    missing or the file does not record what was requested (written before it did)."""
    req = result.get("requested")
    if not req:
        return []
    out = []
    for cache in req["caches"]:
        have = {r["concurrency"] for r in result["rows"] if r["cache"] == cache}
        lack = [c for c in req["concurrency"] if c not in have]
        if lack:
            out.append(f"cache {cache} at concurrency {', '.join(map(str, lack))}")
    if req.get("direct"):
        lack = [c for c in req["caches"] if c not in {r["cache"] for r in result.get("direct", [])}]
        if lack:
            out.append(f"the direct generate() latency (--direct) for cache {', '.join(lack)}")
    if req.get("agreement"):
        lack = [c for c in req["caches"] if c not in {r["cache"] for r in result.get("batch_agreement", [])}]
        if lack:
            out.append(f"the batched-vs-alone agreement (--agreement {req['agreement']}) for cache {', '.join(lack)}")
    return out


def draw(result: dict, png: Path) -> None:
    """The plot of a result file: tokens/s and p50 latency against concurrency, one line per cache setting
    (eval/replot.py redraws it from the JSON: the PNGs are not tracked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for cache in dict.fromkeys(r["cache"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["cache"] == cache]
        a.plot([r["concurrency"] for r in rows], [r["tokens_per_s"] or 0 for r in rows], marker="o", label=cache)
        b.plot([r["concurrency"] for r in rows], [r["p50_latency_s"] or 0 for r in rows], marker="o", label=cache)
    for ax, label in ((a, "generated tokens/s"), (b, "p50 latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend(title="cache")
    fig.suptitle(f"dllm-cache serve: {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def merged_rows(path: Path | None) -> dict:
    """Rows, direct timings and agreement of an earlier run (--merge), to be completed by this one."""
    if path is None:
        return {"rows": [], "direct": [], "batch_agreement": [], "command": None}
    earlier = json.loads(Path(path).read_text())
    return {key: earlier.get(key, []) for key in ("rows", "direct", "batch_agreement")} | {"command": earlier.get("command")}


def result_of(args: argparse.Namespace, argv: list[str] | None, model: str, model_dir: str | None, earlier: dict,
              rows: list, direct: list, agree: list, complete: bool, device: str | None = None) -> dict:
    """The result file: this run's rows, plus an earlier run's (--merge) for the settings this one did not measure.
    `device`: the machine's name when it is not this one (--from-raw); `requested` records what the arguments
    asked for, so a run cut short can say what it lacks (missing())."""

    def keep(old: list, new: list, key) -> list:
        measured = {key(r) for r in new}
        return [r | {"run": "earlier"} for r in old if key(r) not in measured] + new

    shape = args.shape or (Path(model_dir).name if model_dir else model)
    commands = ["python -m eval.serving " + " ".join(argv if argv is not None else sys.argv[1:])]
    if earlier["command"]:
        commands.insert(0, earlier["command"])
    if device is None:
        device = device_name(args.device) if args.url is None else f"server at {args.url}"
    return {"device": device,
            "model": f"{shape} ({args.dtype}, random weights)" if args.shape else shape,
            "command": " ; then ".join(commands) if len(commands) > 1 else commands[0],
            "complete": complete,
            "settings": {"max_tokens": args.gen_length, "block_length": args.block_length, "steps": steps_of(args),
                         "tokens_per_step": args.tokens_per_step, "prompt_chars": args.prompt_chars,
                         "continuous": args.continuous, "mixed_lengths": args.mixed_lengths,
                         "requests_per_client": args.requests_per_client, "max_wait_ms": args.max_wait_ms,
                         "max_batch_size": args.max_batch_size or max(args.concurrency), "prompt_set": args.prompt_set},
            "requested": {"caches": args.caches, "concurrency": args.concurrency, "direct": args.direct,
                          "agreement": args.agreement},
            "rows": keep(earlier["rows"], rows, lambda r: (r["cache"], r["concurrency"])),
            "direct": keep(earlier["direct"], direct, lambda r: r["cache"]),
            "batch_agreement": keep(earlier["batch_agreement"], agree, lambda r: r["cache"])}


def from_raw(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The result file of a recorded run (--from-raw), its numbers untouched: rows, direct timings and
    agreement as recorded, the device, model and command as recorded, the settings and the requested rows
    from these arguments (the recorded run's own). Refuses a file whose rows these arguments did not ask for."""
    raw = json.loads(Path(args.from_raw).read_text())
    asked = {(c, n) for c in args.caches for n in args.concurrency}
    stray = [(r["cache"], r["concurrency"]) for r in raw["rows"] if (r["cache"], r["concurrency"]) not in asked]
    if stray:
        raise SystemExit(f"--from-raw {args.from_raw}: rows {stray} are not among the (cache, concurrency) these "
                         f"arguments ask for ({sorted(asked)}); pass the recorded run's own arguments")
    result = result_of(args, argv, raw["model"], None, merged_rows(None), raw["rows"], raw.get("direct", []),
                       raw.get("batch_agreement", []), complete=bool(raw.get("complete", False)), device=raw["device"])
    result["model"], result["command"] = raw["model"], raw["command"]
    result["from_raw"] = str(args.from_raw)
    result["written_by"] = "python -m eval.serving " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.note:
        result["note"] = args.note
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", default=None, help="benchmark this running server (its first model)")
    src.add_argument("--model", default=None, help="start `dllm-cache serve` on this model directory")
    src.add_argument("--shape", default=None, help="start it on a random checkpoint of this shape (eval.random_checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--caches", nargs="+", default=["none", "default"], help="cache presets to compare ('none' = uncached)")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-chars", type=int, default=128)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--tokens-per-step", type=float, default=3.0, help="fixed steps = gen_length / this")
    p.add_argument("--max-batch-size", type=int, default=None, help="server's; None = the largest concurrency")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--continuous", action="store_true", help="start the server with --continuous (continuous batching)")
    p.add_argument("--mixed-lengths", action="store_true",
                   help="requests ask for 1/4, 1/2 or all of --gen-length (steps scaled alike); each length is its own "
                        "batch key, so they never share a batch: for rows of one batch ending in different blocks use "
                        "--prompt-set arith-drill with the shipped model")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also compare N prompts answered in one batch with the same served alone (identical fraction)")
    p.add_argument("--direct", action="store_true", help="also time a direct generate() per cache setting")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--merge", type=Path, default=None, metavar="JSON",
                   help="an earlier result file of the same model and settings: its rows for the (cache, concurrency) "
                        "this run does not measure are kept (marked run: earlier), so a run cut by its time limit "
                        "can be completed")
    p.add_argument("--prompt-set", default="words", choices=["words", "arith-drill"],
                   help="words: distinct prompts of --prompt-chars characters (any model); arith-drill: the shipped "
                        "model's drills, whose answers end at its end token in different blocks (drill_prompts)")
    p.add_argument("--from-raw", type=Path, default=None, metavar="JSON",
                   help="measure nothing: rewrite this recorded result file through the result and table writers; "
                        "pass the recorded run's own arguments with it (see the module docstring)")
    p.add_argument("--chunk-times", action="store_true",
                   help="keep every request's streamed chunks in its row of the result file (\"streams\": per request "
                        "the client, when it was sent, and [seconds since sent, characters, finish reason] per chunk): "
                        "whether blocks arrive as they complete or all at the end")
    p.add_argument("--note", default=None, help="a sentence the table ends with (e.g. why a run is incomplete)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gen_length % args.block_length:
        raise SystemExit("--gen-length must be a multiple of --block-length")
    if args.from_raw is not None:
        write_outputs(from_raw(args, argv), args.out, plot=not args.no_plot)
        print(f"wrote {args.out} (+ .md{'' if args.no_plot else ', .png'}) from {args.from_raw}")
        return 0
    settings = {"max_tokens": args.gen_length, "block_length": args.block_length, "steps": steps_of(args)}
    proc, model_dir, tmp = None, args.model, None
    if args.shape:
        from eval.random_checkpoint import save

        tmp = tempfile.TemporaryDirectory(prefix="serving-bench-")
        model_dir = str(save(Path(tmp.name) / args.shape, args.shape, dtype=getattr(__import__("torch"), args.dtype)))
    url = args.url
    if url is None:
        if model_dir is None:
            raise SystemExit("pass --url, --model or --shape")
        proc = start_server(model_dir, args, free_port())
        url = proc.args[proc.args.index("--port") + 1]
        url = f"http://127.0.0.1:{url}"
    try:
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        count = max(args.concurrency) * args.requests_per_client
        texts = drill_prompts(count) if args.prompt_set == "arith-drill" else prompts(count, args.prompt_chars)
        rows, agree = [], []
        earlier = merged_rows(args.merge)

        def save_partial() -> None:  # a run cut by its time limit still leaves every row it measured
            write_outputs(result_of(args, argv, model, model_dir, earlier, rows, [], agree, complete=False), args.out,
                          plot=False)

        for cache in args.caches:
            asyncio.run(run_level(url, model, 1, 1, cache, texts[:1], settings))  # warm-up (allocations, kernels)
            for c in args.concurrency:
                row = asyncio.run(run_level(url, model, c, args.requests_per_client, cache, texts, settings,
                                            mixed=args.mixed_lengths, server_pid=proc.pid if proc is not None else None,
                                            chunk_times=args.chunk_times))
                print(json.dumps({k: v for k, v in row.items() if k != "streams"}), flush=True)
                rows.append(row)
                save_partial()
            if args.agreement:
                share = asyncio.run(agreement(url, model, cache, texts[: args.agreement], settings))
                agree.append({"cache": cache, "prompts": args.agreement, "identical_fraction": share})
                print(json.dumps(agree[-1]), flush=True)
                save_partial()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    direct = []
    if args.direct and model_dir is not None:
        for cache in args.caches:
            direct.append({"cache": cache, "latency_s": direct_latency(model_dir, args.device, args.dtype, cache, texts[0],
                                                                      settings)})
    result = result_of(args, argv, model, model_dir, earlier, rows, direct, agree, complete=True)
    write_outputs(result, args.out, plot=not args.no_plot)
    if tmp is not None:
        tmp.cleanup()
    print(f"wrote {args.out} (+ .md{'' if args.no_plot else ', .png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
