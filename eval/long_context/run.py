"""Fine-tune one proxy on kv-retrieval, then run the long-task frontier on it: one process, one wall-clock budget.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m eval.long_context.run --model eval/tiny/model --name llada-kv \
        --out build/long_context/llada --train-until 250 --sweep-until 520

(`eval/long_context/gpu.sh` runs the LLaDA and the Dream proxy side by side on one GPU in one device call.)

Phases, each bounded by seconds since --start (default: this process's start), so a device call's limit
is never crossed and whatever finished is written:
1. training (until --train-until, or earlier once a validation set of --val-n examples, drawn from
   another seed than the held-out set, is at least --stop-at right): the LLaDA SFT objective of
   `eval.tiny.train.masked_diffusion_loss` (Dream through its shifted head), half the rows masked
   from a random cut on as semi-AR decoding sees them; batches of ~--batch-tokens tokens drawn on the
   device by `task.train_batch`; a curriculum: record counts from 8 up during the first quarter, then
   70% at the held-out range and 30% shorter;
2. export (bf16 weights + tokenizer to <out>/model);
3. the sweep (until --sweep-until): `settings()` in priority order on the N_TEST held-out examples,
   each row written to <out>/frontier_<name>.json as soon as it is measured, in the schema of
   eval/frontier's rows plus "correct_ids" (indices of the problems answered right), "paired" (the
   exact McNemar test against the uncached row of the same decoding), "mean_prompt_tokens" and
   "threshold". A row that would not finish in time is skipped and listed under "skipped".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch

from eval.frontier.paired import correct_indices, paired_object
from eval.long_context import task

VAL_SEED = 777  # validation set for early stopping: never the held-out seed
THRESHOLD = 0.9  # parallel decoding: commit every masked token whose confidence reaches it (Fast-dLLM's value)


def log(text: str) -> None:
    print(f"[long {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------- settings
def settings(arch: str) -> list[tuple[str, object, float | None]]:
    """(name, CacheConfig or None, sampler threshold or None), most wanted first (the sweep stops at its
    deadline): uncached; the library default and the paper default; the same under threshold decoding,
    with the default adapted to parallel decoding (Kr 2: several tokens commit per step); block-prefix and
    block-dual; Kp x Kr for the frontier selection, then for the paper's; transfer ratios."""
    from dllm_cache import CacheConfig

    paper = CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=0.25, selection="paper", cuda_graphs=False)
    default = replace(CacheConfig(), cuda_graphs=False)
    rows: list[tuple[str, object, float | None]] = [("uncached", None, None), ("default", default, None),
                                                     ("paper-default", paper, None)]
    rows += [(f"uncached thr={THRESHOLD}", None, THRESHOLD), (f"default thr={THRESHOLD}", default, THRESHOLD),
             (f"paper-default thr={THRESHOLD}", paper, THRESHOLD),
             (f"default Kr=2 thr={THRESHOLD}", replace(default, response_interval=2), THRESHOLD)]
    rows += [("block-prefix", replace(default, policy="block-prefix"), None),
             ("block-dual", replace(default, policy="block-dual"), None),
             (f"block-dual thr={THRESHOLD}", replace(default, policy="block-dual"), THRESHOLD)]
    for sel in ("frontier", "paper"):
        for kp in (10, 50, 100, None):
            for kr in (2, 4, 8, 16):
                rows.append((f"{sel} Kp={kp or 'none'} Kr={kr}", replace(paper, selection=sel, prompt_interval=kp,
                                                                         response_interval=kr), None))
    for r in (0.0, 0.1, 0.5, 1.0):
        rows += [(f"frontier ratio={r:g}", replace(paper, selection="frontier", transfer_ratio=r), None),
                 (f"paper ratio={r:g}", replace(paper, transfer_ratio=r), None)]
    out, seen = [], set()
    for name, cfg, thr in rows:  # one measurement per distinct (config, threshold); the first name wins
        if (cfg, thr) in seen:
            continue
        seen.add((cfg, thr))
        out.append((name, cfg, thr))
    return out


def _config_fields(cfg) -> dict | None:
    if cfg is None:
        return None
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("cuda_graphs", "compile")}, default=str))


# ----------------------------------------------------------------------------- training
def records_for(rng: random.Random, progress: float, high: tuple[int, int]) -> int:
    """Records per row of the next batch: a curriculum (short contexts first, where the answer is a
    larger share of the tokens), then mostly the held-out range."""
    lo, hi = high
    if progress < 0.25:
        top = max(8, int(8 + (hi - 8) * progress / 0.25))
        return int(round(math.exp(rng.uniform(math.log(8), math.log(top)))))
    return rng.randint(lo, hi) if rng.random() < 0.7 else rng.randint(min(8, lo), lo)


def validate(model, tok, examples: list[dict], device: str, batch_size: int) -> float:
    from eval.tiny.evaluate import generate_texts

    was = model.training
    model.eval()
    try:
        texts = generate_texts(model, tok, [task.prompt_of(e) for e in examples], device=device, settings=gen_for(model),
                               batch_size=batch_size)
    finally:
        model.train(was)
    return sum(task.is_correct(t, e["answer"]) for t, e in zip(texts, examples)) / max(1, len(examples))


def gen_for(model) -> dict:
    from eval.tiny.evaluate import sampler_settings

    return sampler_settings(model, task.GEN)


def train(model, tok, args, t0: float, device: str, meta: dict) -> None:
    from eval.tiny.train import Batch, masked_diffusion_loss

    vocab = task.Vocab(tok)
    arch = "dream" if model.config.model_type.lower() == "dream" else "llada"
    gen = torch.Generator(device=device).manual_seed(task.TRAIN_SEED)
    rng = random.Random(task.TRAIN_SEED)
    val = task.test_examples(args.val_n, seed=VAL_SEED)
    if args.toy:
        val = [task.make_example(random.Random(f"val/{i}"), args.records[0]) for i in range(args.val_n)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = max(1.0, args.train_until - (time.time() - t0))
    start = time.time()
    on_cuda = device.startswith("cuda")
    model.train()
    step, window, last_val = 0, [], time.time()
    meta.update(train_steps=0, train_tokens=0, val=[])
    while True:
        now = time.time()
        if now - t0 >= args.train_until or (args.max_steps and step >= args.max_steps):
            break
        progress = min(1.0, (now - start) / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        n_rec = records_for(rng, progress, tuple(args.records))
        length = len(vocab.head) + n_rec * task.RECORD_TOKENS + 13 + task.GEN["gen_length"]
        rows = max(1, min(args.max_rows, args.batch_tokens // length))
        ids = task.train_batch(vocab, gen, rows, n_rec, task.GEN["gen_length"], device)  # (rows, P + R)
        batch = Batch("kv", ids, None, task.GEN["gen_length"], step)  # no padding: no mask, SDPA's fastest kernels
        with torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
            loss, _ = masked_diffusion_loss(model, batch, tok.mask_token_id, generator=gen, shifted=arch == "dream",
                                            suffix_frac=0.5, eos_id=tok.eos_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        meta["train_steps"], meta["train_tokens"] = step, meta["train_tokens"] + ids.numel()
        window.append(loss.detach())
        if step % args.log_every == 0:
            mean = float(torch.stack(window).mean())
            window = []
            if not math.isfinite(mean):
                raise SystemExit(f"loss is {mean} at step {step}; lower --lr (now {args.lr})")
            log(f"train step {step} loss {mean:.4f} lr {lr:.2e} records {n_rec} rows {rows} "
                f"tokens {meta['train_tokens'] / 1e6:.1f}M elapsed {time.time() - t0:.0f}s")
        if time.time() - last_val > args.val_every and progress > 0.3:
            acc = validate(model, tok, val, device, args.eval_batch)
            meta["val"].append({"step": step, "elapsed": round(time.time() - t0, 1), "accuracy": acc})
            log(f"validation step {step}: {100 * acc:.1f}% of {len(val)}")
            last_val = time.time()
            if acc >= args.stop_at:
                meta["stopped"] = f"validation {acc:.3f} >= {args.stop_at}"
                break
    meta["train_seconds"] = round(time.time() - start, 1)
    model.eval()


# ----------------------------------------------------------------------------- sweep
class ForwardCounter:
    """Counts the model's forward calls inside a `with` block (uncached steps: one forward each)."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def _count(self, *_) -> None:
        self.n += 1

    def __enter__(self) -> ForwardCounter:
        self.hook = self.model.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()


def sweep(model, tok, args, t0: float, device: str, report: dict, write) -> None:
    from dllm_cache import cache_enabled, cache_stats
    from eval.frontier.run import realized_flops, wilson_interval
    from eval.tiny.evaluate import generate_texts, mean_flops

    examples = task.test_examples(args.n) if not args.toy else \
        [task.make_example(random.Random(f"toy/{i}"), args.records[1]) for i in range(args.n)]
    prompts = [task.prompt_of(e) for e in examples]
    lens = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    lengths = Counter(lens)
    report["mean_prompt_tokens"] = sum(lens) / len(lens)
    base_gen = gen_for(model)
    base: dict = {}  # threshold -> (texts, correct_ids, seconds, flops)
    est = None  # seconds of the last uncached row: an upper bound for a cached one
    wanted = set(args.only.split(",")) if args.only else None
    for name, cfg, thr in settings(report["arch"]):
        if wanted is not None and name not in wanted and cfg is not None:
            continue
        left = args.sweep_until - (time.time() - t0)
        need = (est or 0) * (1.0 if cfg is None else 0.6)
        if left < need or left < 2:
            report["skipped"].append(name)
            log(f"skip {name}: {left:.0f}s left, ~{need:.0f}s needed")
            continue
        if thr not in base and cfg is not None:  # the baseline of this decoding did not run
            report["skipped"].append(name)
            continue
        gen = dict(base_gen, **({"threshold": thr} if thr is not None else {}))
        try:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            stats = None
            if cfg is None:
                with ForwardCounter(model) as calls:
                    texts = generate_texts(model, tok, prompts, device=device, settings=gen, batch_size=args.eval_batch)
                steps_run = calls.n / math.ceil(len(prompts) / args.eval_batch)  # forwards per batch = steps it ran
            else:
                with cache_enabled(model, cfg):
                    texts = generate_texts(model, tok, prompts, device=device, settings=gen, batch_size=args.eval_batch)
                    stats = cache_stats(model)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except Exception as err:  # a failing setting is recorded, the sweep goes on
            traceback.print_exc()
            report["errors"].append({"name": name, "error": repr(err)})
            continue
        if cfg is None:
            est = seconds
        ok = correct_indices(task.is_correct(t, e["answer"]) for t, e in zip(texts, examples))
        # FLOPs: analytic at batch 1 and each prompt's own length; a drift- or threshold-run row counts
        # the steps it actually ran where the cache counted them (cache_stats), else every scheduled step
        if cfg is None:  # uncached cost is linear in the steps run (fewer than scheduled under a threshold)
            flops = mean_flops(model, lengths, gen, None) * steps_run / gen["steps"]
        elif thr is not None or cfg.drift_triggered:
            flops = realized_flops(model, lengths, gen, cfg, stats)
        else:
            flops = mean_flops(model, lengths, gen, cfg)
        if cfg is None:
            base[thr] = (texts, ok, seconds, flops)
        b_texts, b_ok, b_seconds, b_flops = base[thr]
        against = "uncached" if thr is None else f"uncached thr={thr}"
        correct = len(ok)
        row = {
            "name": name, "model": report["model"], "task": task.TASK, "config": _config_fields(cfg), "threshold": thr,
            "n": len(examples), "correct": correct, "accuracy": correct / len(examples),
            "ci95": list(wilson_interval(correct, len(examples))),
            "agreement_with_uncached": None if cfg is None else
            sum(task.answer_key(a) == task.answer_key(b) for a, b in zip(texts, b_texts)) / len(texts),
            "paired": None if cfg is None else paired_object(ok, b_ok, len(examples), against=against),
            "flops": flops, "flops_vs_uncached": flops / b_flops, "gpu_seconds": seconds / len(examples),
            "speedup": None if cfg is None else b_seconds / seconds,
            "recompute_fraction": None if stats is None else stats.get("recompute_fraction"),
            "cache_stats": stats, "batch_size": args.eval_batch, "generation": gen,
            "mean_prompt_tokens": report["mean_prompt_tokens"], "correct_ids": ok,
            "samples": [{"generated": t, "answer": e["answer"]} for t, e in zip(texts[:2], examples[:2])],
            "seconds": round(seconds, 2), "steps_run": steps_run if cfg is None else None,
        }
        report["rows"].append(row)
        p = row["paired"]
        log(f"{name:34s} acc {100 * row['accuracy']:5.1f}% flops x{row['flops_vs_uncached']:.3f} {seconds:6.2f}s"
            + ("" if p is None else f" b {p['cached_right_uncached_wrong']} c {p['cached_wrong_uncached_right']} "
                                    f"p {p['p_value']:.3g}"))
        write()


# ----------------------------------------------------------------------------- report
NOT_LEARNT = 0.5  # uncached accuracy below this: the rows cannot speak for the cache's quality


def annotate(report: dict) -> dict:
    """The run's report as eval/frontier's `report` reads it (idempotent): uncached rows agree with
    themselves at speedup 1 (the frontier runner's schema), and a "note" that the summary and the
    markdown show above the rows when the uncached model did not learn the task (below NOT_LEARNT)."""
    for r in report["rows"]:
        if r["config"] is None:
            r["agreement_with_uncached"], r["speedup"] = 1.0, 1.0
    unc = next((r for r in report["rows"] if r["name"] == "uncached"), None)
    tr = report.get("training", {})
    if unc is not None and unc["accuracy"] < NOT_LEARNT:
        val = ", ".join(f"{100 * v['accuracy']:.0f}%" for v in tr.get("val", [])) or "none"
        report["note"] = (
            f"NOT LEARNT: {report['init_from']} fine-tuned {tr.get('train_steps')} steps "
            f"({tr.get('train_tokens', 0) / 1e6:.0f}M tokens, {tr.get('train_seconds')} s) reached {100 * unc['accuracy']:.1f}% "
            f"uncached (validation checks: {val}), so the accuracy and paired columns say nothing about the cache; the rows "
            f"record the pipeline, FLOPs and speed at {report['mean_prompt_tokens']:.0f}-token prompts. At "
            f"{task.GEN['steps']} steps Kp 50, 100 and none are one schedule (no prompt refresh)."
            + (" Rows skipped at the deadline: " + ", ".join(report["skipped"]) + "." if report.get("skipped") else ""))
    return report


def annotate_file(src: Path, dest: Path) -> None:
    """A run's frontier_<name>.json (e.g. as a device call returned it) -> `annotate`d, written to
    `dest` (.json.gz: gzipped as the committed per-model files are)."""
    from eval.frontier.run import read_json, write_json

    write_json(dest, annotate(read_json(src)))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="proxy model folder to start from (eval/tiny/model, eval/tiny/dream_model)")
    p.add_argument("--name", required=True, help="model key in the reports, e.g. llada-kv")
    p.add_argument("--out", type=Path, required=True, help="folder for the log's files, the model and frontier_<name>.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--start", type=float, default=None, help="epoch seconds the budgets count from (default: now)")
    p.add_argument("--train-until", type=float, default=250.0, help="stop training this many seconds after --start")
    p.add_argument("--sweep-until", type=float, default=520.0, help="start no sweep row that would end after this")
    p.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps (0: time only)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-tokens", type=int, default=98304, help="tokens per training batch")
    p.add_argument("--max-rows", type=int, default=256)
    p.add_argument("--records", type=int, nargs=2, default=list(task.RECORDS), help="record range of long rows")
    p.add_argument("--val-n", type=int, default=128)
    p.add_argument("--val-every", type=float, default=40.0, help="seconds between validation runs")
    p.add_argument("--stop-at", type=float, default=0.99, help="stop training once validation reaches this")
    p.add_argument("--n", type=int, default=task.N_TEST, help="held-out examples in the sweep")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--toy", action="store_true", help="CPU smoke run: short contexts from --records, few rows")
    p.add_argument("--only", default=None, help="comma-separated setting names to sweep (uncached rows always run)")
    args = p.parse_args(argv)
    t0 = args.start or time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from eval.tiny.evaluate import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model, args.device, torch.float32)  # fp32 master weights; bf16 autocast on CUDA
    arch = "dream" if model.config.model_type.lower() == "dream" else "llada"
    report: dict = {"model": args.name, "arch": arch, "n": args.n, "rows": [], "skipped": [], "errors": [],
                    "init_from": args.model, "device": args.device,
                    "command": " ".join(["python -m eval.long_context.run", *(argv or sys.argv[1:])]),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "torch": torch.__version__,
                    "task": task.TASK, "test_seed": task.TEST_SEED, "train_seed": task.TRAIN_SEED, "training": {}}
    path = args.out / f"frontier_{args.name}.json"

    def write() -> None:
        path.write_text(json.dumps(report, indent=1, default=str))

    log(f"{arch} {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params from {args.model}; "
        f"train until {args.train_until}s, sweep until {args.sweep_until}s")
    try:
        train(model, tok, args, t0, args.device, report["training"])
    except Exception as err:
        traceback.print_exc()
        report["errors"].append({"name": "training", "error": repr(err)})
    write()
    if args.device.startswith("cuda"):
        model.to(torch.bfloat16)
    try:
        model.save_pretrained(args.out / "model", max_shard_size="15MB")
        tok.save_pretrained(args.out / "model")
        (args.out / "model" / "training_summary.json").write_text(json.dumps(report["training"], indent=1))
    except Exception as err:
        traceback.print_exc()
        report["errors"].append({"name": "export", "error": repr(err)})
    log(f"trained {report['training'].get('train_steps')} steps in {report['training'].get('train_seconds')}s; sweep")
    with torch.no_grad():
        sweep(model, tok, args, t0, args.device, report, write)
    annotate(report)
    write()
    log(f"done: {len(report['rows'])} rows, {len(report['skipped'])} skipped, {len(report['errors'])} errors; "
        f"elapsed {time.time() - t0:.0f}s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
