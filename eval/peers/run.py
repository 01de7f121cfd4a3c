"""Side by side on one GPU: our engine, the original dLLM-Cache code and Fast-dLLM's code, on the
same random-weight LLaDA-8B-shaped model, the same prompts and the same decoding steps.

The peers' code is read from their public repositories, cloned into an ignored folder (never
committed; `peers/` is in .gitignore):

    git clone https://github.com/maomaocun/dLLM-cache peers/dLLM-cache
    git clone https://github.com/NVlabs/Fast-dLLM peers/Fast-dLLM

Each implementation runs in its own process (dLLM-Cache's package is also named `dllm_cache`,
and separate processes keep GPU memory and global switches such as Fast-dLLM's SDPA settings
apart). Every process builds the model from the same config and initialises each parameter from
its name (`init_by_name`), so all three hold identical weights; parameter names are the official
LLaDA ones in all three. The LLaDA model class of the original dLLM-Cache runs is the one its
repository ships (mmada_models/modeling_llada.py, the official LLaDA code MMaDA builds on): its
hook is registered on it unchanged; an adapter drops the one keyword that class's model passes
and the hook does not take (block_mask). Fast-dLLM runs its own llada/model class and generate.py.

Random weights are never confident, so threshold decoding would unmask one token per step. The
steps real decoding takes come from decoding traces of the trained proxy model (eval/traces/run.py,
recorded with the same cache and threshold in our engine): our runs replay them
(`generate(schedule=...)`); Fast-dLLM's generate calls its own transfer function unchanged (its
cost is paid) and the adapter then keeps the trace's number of most confident tokens. The
original dLLM-Cache has no parallel decoding: one token per step.

    PYTHONPATH=. python -m eval.peers run --dllm-cache-repo peers/dLLM-cache --fast-dllm-repo peers/Fast-dLLM \
        --workload gsm8k --batch 1 --traces eval/results/traces_llada_arith
    PYTHONPATH=. python -m eval.peers report          # stacked.json -> stacked.md / stacked.png

`--traces PREFIX` names the trace files PREFIX_<rule>_<cache>.json[.gz] (eval/traces/run.py's names):
threshold0.9_none, threshold0.9_paper, threshold0.9_block-dual (and fixed_paper for the proxy
accuracy of the cache at one token per step; threshold0.9_block-dual_eos adds our run with the early
stop, which the peers' generate functions do not have). Rows of eval/results/stacked.json: impl, setting,
workload, batch, gen_length, seconds (one whole generation), tokens_per_s (generated tokens),
speedup (over our uncached one-token-per-step run in the same invocation), proxy_accuracy (of the
same setting on the proxy model, our engine; null where none was recorded), device, steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "eval" / "results"
WORKLOADS = {"gsm8k": {"prompt_len": 700, "gen_len": 256, "block_length": 32},
             "hotpotqa": {"prompt_len": 4000, "gen_len": 32, "block_length": 32}}
THRESHOLD = 0.9
KEY = ("impl", "setting", "workload", "batch", "gen_length", "device")


# ----------------------------------------------------------------------------- shared by every process


@torch.no_grad()
def init_by_name(model: torch.nn.Module, seed: int, std: float) -> None:
    """Matrices ~ N(0, std) from a generator seeded by (seed, parameter name), norms 1, biases 0:
    the same weights in every implementation whose parameter names agree, in any order."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.normal_(0.0, std, generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def build(make, device: torch.device, dtype: torch.dtype, seed: int, std: float) -> torch.nn.Module:
    """make() -> a model; built on the meta device, then given uninitialised storage on `device` and
    initialised by name (no model-specific init: 8B parameters would take minutes)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = make()
        if any(True for _ in model.buffers()):  # buffers need their real values: build on the device
            with torch.device(device):
                model = make()
        else:
            model = model.to_empty(device=device)
    finally:
        torch.set_default_dtype(previous)
    init_by_name(model, seed, std)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, model: torch.nn.Module, device: torch.device, repeats: int, gen_len: int) -> dict[str, Any]:
    """One untimed warm-up generation, then `repeats` timed ones: median seconds, forwards per run,
    and the generated tokens of the last run (to check that the implementations agree)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        run()
        times = []
        for _ in range(repeats):
            calls.clear()
            _sync(device)
            t0 = time.perf_counter()
            out = run()
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        handle.remove()
    tokens = (out[0] if isinstance(out, tuple) else out)[:, -gen_len:]  # Fast-dLLM returns (x, nfe)
    return {"seconds": statistics.median(times), "all_seconds": times, "steps": len(calls), "tokens": tokens.tolist()}


def _load_package(name: str, directory: Path, init: bool) -> types.ModuleType:
    """Import the package in `directory` under `name` (running its __init__ or not)."""
    if init:
        spec = importlib.util.spec_from_file_location(name, directory / "__init__.py",
                                                      submodule_search_locations=[str(directory)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    module = types.ModuleType(name)
    module.__path__ = [str(directory)]
    sys.modules[name] = module
    return module


def _load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _official_llada(package: str, directory: Path, config: dict[str, Any]):
    """(LLaDAModelLM factory, module) of an official-style modeling_llada.py in `directory`."""
    _load_package(package, directory, init=False)
    cfg_mod = _load_module(f"{package}.configuration_llada", directory / "configuration_llada.py")
    model_mod = _load_module(f"{package}.modeling_llada", directory / "modeling_llada.py")

    def make():
        cfg = cfg_mod.LLaDAConfig(**config)
        cfg.use_cache = False  # newer transformers drop it from the kwargs; the class reads it
        cfg.init_device = "meta"
        return model_mod.LLaDAModelLM(cfg, init_params=False)

    return make, model_mod


def _replay_counts(trace_row: dict[str, Any] | None) -> list[int] | None:
    return None if trace_row is None else [n for block in trace_row["blocks"] for n in block]


# ----------------------------------------------------------------------------- the three workers


def worker_ours(spec: dict[str, Any]) -> list[dict[str, Any]]:
    from dllm_cache import CacheConfig, cache_enabled
    from dllm_cache.models.llada import LLaDAConfig, LLaDAModelLM
    from dllm_cache.sampling.generate import generate
    from dllm_cache.sampling.trace import ReplaySchedule, batch_rows

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    model = build(lambda: LLaDAModelLM(LLaDAConfig(**spec["config"])), device, dtype, spec["seed"], spec["std"])
    ids = torch.tensor(spec["prompts"], device=device)
    w = spec["workload"]
    out = []
    for s in spec["settings"]:
        cache = None if s["cache"] is None else CacheConfig(**s["cache"])
        kw: dict[str, Any] = {}
        if s.get("trace_rows"):
            kw["schedule"] = ReplaySchedule(batch_rows(s["trace_rows"], ids.shape[0]), w["gen_len"], w["block_length"])

        def run(kw=kw):
            return generate(model, ids, gen_length=w["gen_len"], steps=w["steps"], block_length=w["block_length"], **kw)

        with cache_enabled(model, cache) if cache is not None else _nothing():
            out.append({**s, **timed(run, model, device, spec["repeats"], w["gen_len"])})
    return out


def worker_dllm_cache(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The original dLLM-Cache: its cache singleton, hook and generate function, unchanged."""
    repo = Path(spec["dllm_cache_repo"]).resolve()
    for name in [m for m in sys.modules if m == "dllm_cache" or m.startswith("dllm_cache.")]:
        del sys.modules[name]  # theirs, not ours (same package name)
    make, _ = _official_llada("dllmcache_llada", repo / "mmada_models", spec["config"])
    package = _load_package("dllm_cache", repo / "dllm_cache", init=True)
    utils = _load_package("utils", repo / "utils", init=True)
    cache_mod = sys.modules["dllm_cache.cache"]
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    model = build(make, device, dtype, spec["seed"], spec["std"])
    blocks = model.model.transformer.blocks
    ids = torch.tensor(spec["prompts"], device=device)
    w = spec["workload"]
    out = []
    for s in spec["settings"]:
        c = s["peer_cache"]
        cache_mod.dLLMCache.new_instance(prompt_interval_steps=c["prompt_interval"], gen_interval_steps=c["response_interval"],
                                         transfer_ratio=c["transfer_ratio"])
        package.register_cache_LLaDA(model, "model.transformer.blocks")
        for block in blocks:  # this model class passes block_mask=None, which the hook does not take
            hooked = block.forward
            block.forward = lambda x, *a, block_mask=None, _f=hooked, **k: _f(x, *a, **k)
        try:
            def run():
                return utils.generate(ids, None, model, steps=w["steps"], gen_length=w["gen_len"],
                                      block_length=w["block_length"], mask_id=spec["config"]["mask_token_id"])

            out.append({**s, **timed(run, model, device, spec["repeats"], w["gen_len"])})
        finally:
            package.logout_cache_LLaDA(model, "model.transformer.blocks")
            for block in blocks:
                block.__dict__.pop("forward", None)
    return out


def worker_fast_dllm(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Fast-dLLM's generate_with_dual_cache / generate_with_prefix_cache with its model class; the
    decoding steps of a trace (its own transfer function still runs, then the trace's count of most
    confident tokens is kept)."""
    repo = Path(spec["fast_dllm_repo"]).resolve() / "llada"
    make, _ = _official_llada("model", repo / "model", spec["config"])  # generate.py imports `model.modeling_llada`
    gen = _load_module("fastdllm_generate", repo / "generate.py")
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    model = build(make, device, dtype, spec["seed"], spec["std"])
    ids = torch.tensor(spec["prompts"], device=device)
    if ids.shape[0] != 1:
        return [{**s, "error": "Fast-dLLM's generate functions take one prompt (batch 1)"} for s in spec["settings"]]
    original = gen.get_transfer_index
    w = spec["workload"]
    out = []
    for s in spec["settings"]:
        transfer = replay_transfer(original, _replay_counts(s.get("trace_row")))
        gen.get_transfer_index = transfer
        fn, threshold = getattr(gen, s["function"]), s.get("threshold")

        def run(fn=fn, threshold=threshold, transfer=transfer):
            transfer.reset()
            return fn(model, ids, steps=w["steps"], gen_length=w["gen_len"], block_length=w["block_length"],
                      mask_id=spec["config"]["mask_token_id"], threshold=threshold)

        try:
            row = {**s, **timed(run, model, device, spec["repeats"], w["gen_len"])}
            counts = _replay_counts(s.get("trace_row"))
            if counts is not None:
                row["replayed_counts"] = f"{transfer.used()}/{len(counts)}"
            out.append(row)
        finally:
            gen.get_transfer_index = original
    return out


def replay_transfer(original, counts: list[int] | None):
    """A stand-in for Fast-dLLM's get_transfer_index: calls it (its cost is paid, its x0 kept), then
    keeps the next recorded count of the most confident masked tokens (at least one). A call with
    nothing masked (Fast-dLLM's dual cache runs one more forward on a block its first forward already
    finished) decodes nothing and takes no count, so the counts stay aligned with the trace's blocks.
    counts None: the original unchanged. `.reset()` restarts the count sequence (one per generation);
    `.used()` is how many counts the last generation took (all of them when the replay kept step)."""
    state = {"i": 0}

    def transfer(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
        x0, picked = original(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold)
        if counts is None:
            return x0, picked
        if not bool(mask_index.any()):
            return x0, picked & mask_index
        k = counts[state["i"]] if state["i"] < len(counts) else 1
        state["i"] += 1
        # ranked by probability, as our samplers rank (so the same trace picks the same tokens)
        conf = torch.where(mask_index, logits.float().softmax(-1).max(dim=-1).values, -torch.inf)  # (batch, n)
        keep = torch.zeros_like(picked)
        keep.scatter_(1, conf.topk(max(1, min(k, conf.shape[1])), dim=-1).indices, True)
        return x0, keep & mask_index

    transfer.reset = lambda: state.update(i=0)
    transfer.used = lambda: state["i"]
    return transfer


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


WORKERS = {"ours": worker_ours, "dllm-cache-original": worker_dllm_cache, "fast-dllm": worker_fast_dllm}


# ----------------------------------------------------------------------------- the parent


def _trace(prefix: str | None, name: str) -> dict[str, Any] | None:
    from dllm_cache.sampling.trace import read_trace

    if prefix is None:
        return None
    for path in (Path(f"{prefix}_{name}.json"), Path(f"{prefix}_{name}.json.gz")):  # the committed ones are gzipped
        if path.is_file():
            return read_trace(path)
    return None


def plan(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], list[str]]:
    """Settings per implementation, the workload (lengths from the traces when given), notes."""
    thr = f"threshold{THRESHOLD:g}"
    names = (f"{thr}_none", f"{thr}_paper", f"{thr}_default", f"{thr}_kr2", f"{thr}_block-prefix", f"{thr}_block-dual",
             "fixed_paper", f"{thr}_block-dual_eos")
    traces = {k: _trace(args.traces, k) for k in names}
    notes = [f"trace {k}: {'missing' if v is None else 'found'}" for k, v in traces.items() if args.traces]
    w = dict(WORKLOADS[args.workload])
    found = [t for t in traces.values() if t is not None]
    if found:
        gen, block = found[0]["meta"]["gen_length"], found[0]["meta"]["block_length"]
        if any((t["meta"]["gen_length"], t["meta"]["block_length"]) != (gen, block) for t in found):
            raise SystemExit("the traces were recorded with different gen_length / block_length")
        if (gen, block) != (w["gen_len"], w["block_length"]):
            notes.append(f"gen length {gen} and block {block} from the traces (workload default "
                         f"{w['gen_len']} / {w['block_length']})")
        w.update(gen_len=gen, block_length=block)
    w["steps"] = w["gen_len"]  # the fixed schedule: one token per step
    for key in ("prompt_len", "gen_len", "block_length"):
        if getattr(args, key, None) is not None:
            w[key] = getattr(args, key)
            w["steps"] = w["gen_len"]

    def acc(name: str, key: str = "accuracy"):
        return None if traces.get(name) is None else traces[name]["meta"].get(key)

    uncached_acc = next((t["meta"].get("uncached_accuracy") for t in found), None)
    # the published policy, as the original dLLM-Cache runs it (our default selection is "frontier")
    cache = {"prompt_interval": 100, "response_interval": 8, "transfer_ratio": 0.25, "selection": "paper"}
    compiled = {**cache, "compile": True} if args.compile else cache
    ours = [
        {"setting": "uncached, 1 token/step", "cache": None, "proxy_accuracy": uncached_acc, "baseline": True},
        {"setting": "cache (Kp 100, Kr 8, r 0.25)", "cache": compiled, "proxy_accuracy": acc("fixed_paper")},
    ]
    dual = {"policy": "block-dual", "compile": args.compile}
    prefix = {"policy": "block-prefix", "compile": args.compile}
    frontier = {**compiled, "selection": "frontier"}  # CacheConfig()'s selection
    for name, label, cfg in ((f"{thr}_none", f"threshold {THRESHOLD:g}", None),
                             (f"{thr}_paper", f"cache + threshold {THRESHOLD:g}", compiled),
                             (f"{thr}_default", f"frontier cache + threshold {THRESHOLD:g}", frontier),
                             (f"{thr}_kr2", f"frontier cache, Kr 2 + threshold {THRESHOLD:g}",
                              {**frontier, "response_interval": 2}),
                             (f"{thr}_block-prefix", f"block-prefix cache + threshold {THRESHOLD:g}", prefix),
                             (f"{thr}_block-dual", f"block-dual cache + threshold {THRESHOLD:g}", dual),
                             (f"{thr}_block-dual_eos", f"block-dual cache + threshold {THRESHOLD:g} + early stop", dual)):
        if traces[name] is not None:
            ours.append({"setting": label, "cache": cfg, "trace_rows": traces[name]["rows"], "proxy_accuracy": acc(name)})
    peers: dict[str, list[dict[str, Any]]] = {"ours": ours}
    if args.dllm_cache_repo:
        peers["dllm-cache-original"] = [{"setting": "cache (Kp 100, Kr 8, r 0.25), 1 token/step", "peer_cache": cache,
                                         "proxy_accuracy": acc("fixed_paper"), "same_as": ours[1]["setting"]}]
    if args.fast_dllm_repo:
        # each of Fast-dLLM's caches replays the trace of our policy that does what it does
        dual_trace = traces[f"{thr}_block-dual"]
        prefix_trace = traces[f"{thr}_block-prefix"] or dual_trace
        peers["fast-dllm"] = []
        for kind, function, trace, ours_name in (("dual", "generate_with_dual_cache", dual_trace, "block-dual"),
                                                 ("prefix", "generate_with_prefix_cache", prefix_trace, "block-prefix")):
            replay = None if trace is None else trace["rows"][0]
            note = "" if replay is not None else " (no trace: 1 token/step on random weights)"
            same = traces[f"{thr}_{ours_name}"] is not None and trace is traces[f"{thr}_{ours_name}"]
            peers["fast-dllm"].append(
                {"setting": f"{kind} cache + threshold {THRESHOLD:g}{note}", "function": function, "threshold": THRESHOLD,
                 "trace_row": replay, "proxy_accuracy": acc(f"{thr}_{ours_name}") if same else None,
                 **({"same_as": f"{ours_name} cache + threshold {THRESHOLD:g}"} if same else {})})
    return peers, w, notes


def _spawn(impl: str, spec: dict[str, Any], timeout: float | None) -> list[dict[str, Any]]:
    """Run one implementation's worker in a fresh Python process; its rows, or error rows."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "eval.peers", "worker", impl, str(spec_path), str(out_path)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode or not out_path.is_file():
            tail = (proc.stderr or proc.stdout)[-2000:]
            return [{**s, "error": f"worker exited {proc.returncode}: {tail}"} for s in spec["settings"]]
        return json.loads(out_path.read_text())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from dllm_cache.bench.factory import random_prompts
    from dllm_cache.models import tiny

    config = tiny.llada_8b_config() if args.shape == "llada-8b" else tiny.tiny_llada_config()
    settings, w, notes = plan(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    prompts = random_prompts(config, args.batch, w["prompt_len"], args.seed).tolist()
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    rows = []
    for impl, impl_settings in settings.items():
        spec = {"impl": impl, "settings": impl_settings, "config": config.to_dict(), "device": device, "dtype": dtype,
                "seed": args.seed, "std": args.init_std, "prompts": prompts, "workload": w, "repeats": args.repeats,
                "dllm_cache_repo": args.dllm_cache_repo, "fast_dllm_repo": args.fast_dllm_repo}
        print(f"[peers] {impl}: {len(impl_settings)} settings", file=sys.stderr)
        for r in _spawn(impl, spec, args.timeout):
            rows.append({"impl": impl, "setting": r["setting"], "workload": args.workload, "batch": args.batch,
                         "gen_length": w["gen_len"], "prompt_len": w["prompt_len"], "block_length": w["block_length"],
                         "seconds": r.get("seconds"), "all_seconds": r.get("all_seconds"), "steps": r.get("steps"),
                         "tokens_per_s": args.batch * w["gen_len"] / r["seconds"] if r.get("seconds") else None,
                         "speedup": None, "proxy_accuracy": r.get("proxy_accuracy"), "device": device_name,
                         "baseline": bool(r.get("baseline")), "error": r.get("error"), "shape": args.shape,
                         "same_as": r.get("same_as"), "tokens": r.get("tokens"),
                         "replayed_counts": r.get("replayed_counts")})
    _agreement(rows)
    base = next((r for r in rows if r["baseline"] and r["seconds"]), None)
    for r in rows:
        if base is not None and r["seconds"]:
            r["speedup"] = base["seconds"] / r["seconds"]
    best = _best_ours(rows, base)
    if best is not None:
        rows.append({**best, "setting": f"best: {best['setting']}", "baseline": False})
    for note in notes:
        print(f"[peers] {note}", file=sys.stderr)
    return rows


def _agreement(rows: list[dict[str, Any]]) -> None:
    """A peer row's share of generated tokens equal to our run of the same method (same weights and
    prompts: only arithmetic order differs); the tokens themselves are not kept in the report."""
    ours = {r["setting"]: r.get("tokens") for r in rows if r["impl"] == "ours"}
    for r in rows:
        mine, theirs = ours.get(r.get("same_as")), r.get("tokens")
        r["agreement_with_ours"] = None
        if mine is not None and theirs is not None:
            pairs = [(a, b) for x, y in zip(mine, theirs) for a, b in zip(x, y)]
            r["agreement_with_ours"] = sum(a == b for a, b in pairs) / max(1, len(pairs))
    for r in rows:
        r.pop("tokens", None)


def _best_ours(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """Our fastest setting whose proxy accuracy (where recorded) is within 1 point of uncached."""
    ref = None if base is None else base.get("proxy_accuracy")
    ok = [r for r in rows if r["impl"] == "ours" and r["tokens_per_s"] and not r["baseline"]
          and (ref is None or r["proxy_accuracy"] is None or r["proxy_accuracy"] >= ref - 0.01)]
    return max(ok, key=lambda r: r["tokens_per_s"], default=None)


def _run_of(r: dict[str, Any]) -> tuple:
    """The measurement a row belongs to: rows of one (workload, batch, gen length, device) share a
    baseline and one "best" row."""
    return r["workload"], r["batch"], r["gen_length"], r["device"]


def merge(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of `path` with these rows replacing those of the same key (impl, setting, workload, ...)."""
    old = json.loads(path.read_text()) if path.is_file() else []
    new_keys = {tuple(r[k] for k in KEY) for r in rows}
    same_run = {_run_of(r) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in KEY) not in new_keys
            and not (r.get("setting", "").startswith("best: ") and _run_of(r) in same_run)]
    return kept + rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per workload, batch and gen length: our best row (`_best_ours`) against Fast-dLLM's fastest
    setting in the same run, the issue's "faster than the peer at its best" check."""
    out = []
    for key in dict.fromkeys(_run_of(r) for r in rows):
        same = [r for r in rows if _run_of(r) == key]
        best = next((r for r in same if r["impl"] == "ours" and r["setting"].startswith("best: ")), None)
        peer = max((r for r in same if r["impl"] == "fast-dllm" and r.get("tokens_per_s")),
                   key=lambda r: r["tokens_per_s"], default=None)
        if best is None or peer is None:
            continue
        ratio = best["tokens_per_s"] / peer["tokens_per_s"]
        out.append(f"- {key[0]}, batch {key[1]}, gen {key[2]} ({key[3]}): ours at best ({best['setting'][6:]}, "
                   f"{best['tokens_per_s']:.1f} tokens/s) is {ratio:.2f}x Fast-dLLM at its best ({peer['setting']}, "
                   f"{peer['tokens_per_s']:.1f} tokens/s): {'faster' if ratio > 1 else 'NOT faster'}.")
    return out


def _shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows to draw: each "best: X" row (kept in the data for the verdicts) folded into the row of X of its run,
    which gets `best` set, so a table or plot shows every measurement once."""
    best = {(_run_of(r), r["setting"][len("best: "):]) for r in rows if r["setting"].startswith("best: ")}
    return [{**r, "best": (_run_of(r), r["setting"]) in best and r["impl"] == "ours"}
            for r in rows if not r["setting"].startswith("best: ")]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | batch | gen | impl | setting | steps | seconds | tokens/s | speedup | proxy acc "
             "| agrees with ours | device |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    for r in _shown(rows):
        setting = ("**best:** " if r["best"] else "") + r["setting"] + (f" (error: {r['error'][:80]})" if r.get("error") else "")
        acc = r.get("proxy_accuracy")
        lines.append(f"| {r['workload']} | {r['batch']} | {r['gen_length']} | {r['impl']} | {setting} | "
                     f"{f(r.get('steps'), 'd')} | {f(r.get('seconds'), '.3f')} | {f(r.get('tokens_per_s'), '.1f')} | "
                     f"{f(r.get('speedup'), '.2f')}{'x' if r.get('speedup') else ''} | "
                     f"{f(None if acc is None else 100 * acc, '.1f')} | "
                     f"{f(r.get('agreement_with_ours'), '.3f')} | {r['device']} |")
    found = verdicts(rows)
    return "\n".join(lines + (["", "Against Fast-dLLM (\"best\": our fastest within 1 point of uncached proxy "
                                "accuracy):", *found] if found else [])) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["workload"], r["batch"], r["gen_length"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    colors = {"ours": "tab:green", "dllm-cache-original": "tab:blue", "fast-dllm": "tab:orange"}
    for ax, (workload, batch, gen) in zip(axes[0], groups):
        sel = [r for r in _shown(rows) if (r["workload"], r["batch"], r["gen_length"]) == (workload, batch, gen)
               and r.get("seconds")]
        ax.barh(range(len(sel)), [r["tokens_per_s"] for r in sel], color=[colors.get(r["impl"], "grey") for r in sel])
        ax.set_yticks(range(len(sel)), [f"{r['impl']}: {r['setting']}" for r in sel], fontsize=7)
        for i, r in enumerate(sel):
            ax.text(r["tokens_per_s"], i, f" {r['speedup']:.1f}x" if r.get("speedup") else "", va="center", fontsize=7)
        ax.set(xlabel="generated tokens/s", title=f"{workload}, batch {batch}, gen {gen}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # internal: python -m eval.peers worker IMPL SPEC OUT
        _, impl, spec_path, out_path = argv
        spec = json.loads(Path(spec_path).read_text())
        if spec["device"] == "cpu":
            torch.set_num_threads(1)  # tiny CPU runs: threads only spin
        rows = WORKERS[impl](spec)
        Path(out_path).write_text(json.dumps(rows))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="time every implementation on one workload and batch")
    r.add_argument("--dllm-cache-repo", help="clone of github.com/maomaocun/dLLM-cache (skipped when absent)")
    r.add_argument("--fast-dllm-repo", help="clone of github.com/NVlabs/Fast-dLLM (skipped when absent)")
    r.add_argument("--workload", choices=tuple(WORKLOADS), default="gsm8k")
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--traces", help="trace file prefix, e.g. eval/results/traces_llada_arith (see the docstring)")
    r.add_argument("--shape", choices=("llada-8b", "tiny-llada"), default="llada-8b")
    r.add_argument("--prompt-len", dest="prompt_len", type=int)
    r.add_argument("--gen-len", dest="gen_len", type=int)
    r.add_argument("--block-length", dest="block_length", type=int)
    r.add_argument("--device")
    r.add_argument("--dtype", choices=("bfloat16", "float32"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--init-std", type=float, default=0.02)
    r.add_argument("--repeats", type=int, default=1)
    r.add_argument("--no-compile", dest="compile", action="store_false", help="our cached layer without torch.compile")
    r.add_argument("--timeout", type=float, default=None, help="seconds per implementation process")
    r.add_argument("--out", type=Path, default=RESULTS / "stacked.json")
    rep = sub.add_parser("report", help="stacked.json -> stacked.md and stacked.png beside it")
    rep.add_argument("--out", type=Path, default=RESULTS / "stacked.json")
    args = p.parse_args(argv)
    if args.cmd == "run":
        rows = merge(args.out, run(args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    rows = json.loads(args.out.read_text())
    args.out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
