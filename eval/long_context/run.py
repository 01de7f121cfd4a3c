"""Fine-tune one proxy on kv-retrieval, then run the long-task frontier on it: one process, one wall-clock budget.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m eval.long_context.run --model eval/tiny/model --name llada-kv \
        --out build/long_context/llada --train-until 300 --sweep-until 515

(`eval/long_context/gpu.sh` runs the LLaDA and the Dream proxy side by side on one GPU in one device call.)

Phases, each bounded by seconds since --start (default: this process's start), so a device call's limit
is never crossed and whatever finished is written:
1. training (until --train-until, or earlier once a validation set of --val-n examples at the held-out
   range, drawn from another seed than the held-out set, is at least --stop-at right): the LLaDA SFT
   objective (Dream through its shifted head; `kv_loss`: half the rows masked from a random cut on as
   semi-AR decoding sees them, the value's digits weighted --value-weight) on batches of ~--batch-tokens
   tokens drawn on the device by `task.train_batch`, through a gated record curriculum (`Curriculum`):
   --stages (1-2 records first, many small steps) each until a validation set of that range is
   --advance-at right, then the held-out range (also once --final-after of the budget is spent). The
   learning curve (step, records, loss, validation) goes into the report's "training" object;
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
from dataclasses import asdict, replace
from pathlib import Path

import torch

from dllm_cache.analysis.paired import correct_indices, paired_object
from eval.long_context import task

VAL_SEED = 777  # validation set for early stopping: never the held-out seed
THRESHOLD = 0.9  # parallel decoding: commit every masked token whose confidence reaches it (Fast-dLLM's value)


def log(text: str) -> None:
    print(f"[long {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------- settings
def settings(arch: str) -> list[tuple[str, object, float | None]]:
    """(name, CacheConfig or None, sampler threshold or None), most wanted first (the sweep stops at its
    deadline): uncached; the library default and the paper default; the same under threshold decoding,
    with the default adapted to parallel decoding (Kr 2, or the token clock: several tokens commit per step); block-prefix and
    block-dual; Kp {10, 100} x Kr for the frontier selection, then for the paper's; transfer ratios; Kp 50 and
    none last."""
    from dllm_cache import CacheConfig

    paper = CacheConfig(prompt_interval=100, response_interval=8, transfer_ratio=0.25, selection="paper", cuda_graphs=False)
    default = replace(CacheConfig(), cuda_graphs=False)
    rows: list[tuple[str, object, float | None]] = [("uncached", None, None), ("default", default, None),
                                                     ("paper-default", paper, None)]
    rows += [(f"uncached thr={THRESHOLD}", None, THRESHOLD), (f"default thr={THRESHOLD}", default, THRESHOLD),
             (f"paper-default thr={THRESHOLD}", paper, THRESHOLD),
             (f"default Kr=2 thr={THRESHOLD}", replace(default, response_interval=2), THRESHOLD),
             (f"default tokens-clock thr={THRESHOLD}", replace(default, response_clock="tokens"), THRESHOLD)]
    rows += [("block-prefix", replace(default, policy="block-prefix"), None),
             ("block-dual", replace(default, policy="block-dual"), None),
             (f"block-dual thr={THRESHOLD}", replace(default, policy="block-dual"), THRESHOLD)]
    def grid(kps):
        return [(f"{sel} Kp={kp or 'none'} Kr={kr}", replace(paper, selection=sel, prompt_interval=kp, response_interval=kr),
                 None) for sel in ("frontier", "paper") for kp in kps for kr in (2, 4, 8, 16)]

    rows += grid((10, 100))
    for r in (0.0, 0.1, 0.5, 1.0):
        rows += [(f"frontier ratio={r:g}", replace(paper, selection="frontier", transfer_ratio=r), None),
                 (f"paper ratio={r:g}", replace(paper, transfer_ratio=r), None)]
    # last: at the task's 16 steps Kp 50, 100 and none all refresh the prompt at step 0 only (one schedule),
    # so these rows repeat Kp=100's measurement under other names
    rows += grid((50, None))
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
# Before the held-out range (task.RECORDS, always the last stage): record counts per stage, short first.
# Why a gated curriculum: fine-tuned at 185-300 records with 98k-token batches (~800 steps) the proxies
# learnt the format and the copied name but never which record holds the asked key (loss flat at ~0.5,
# the digits' entropy; recall 12/12 with 1 record, 4/12 with 8). Associative recall forms where the
# answer is a large share of the tokens and steps are many; longer contexts only dilute it after that.
STAGES = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 184))


def parse_stages(text: str) -> list[tuple[int, int]]:
    """"2-4,4-8" -> [(2, 4), (4, 8)] (inclusive record ranges)."""
    out = []
    for part in filter(None, (x.strip() for x in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            out.append((int(lo), int(hi or lo)))
        except ValueError:
            raise ValueError(f"--stages takes ranges like '2-4,4-8', got {part!r} in {text!r}") from None
    return out


class Curriculum:
    """Record-count stages gated on recall: training stays at a stage's range until a validation set
    drawn from that range is at least `advance_at` right, then moves to the next; the last stage is the
    held-out range. A share `replay` of the rows after the first stage is drawn from the shorter counts
    already passed (from the first stage's low end up to the current low end), so recall at few records
    is not unlearnt while the context grows."""

    def __init__(self, stages: list[tuple[int, int]], advance_at: float = 0.9, replay: float = 0.2):
        if not stages:
            raise ValueError("the curriculum needs at least one stage (the held-out range)")
        for lo, hi in stages:
            if not 1 <= lo <= hi <= len(task.KEYS):
                raise ValueError(f"a stage is a record range lo-hi with 1 <= lo <= hi <= {len(task.KEYS)}, got {lo}-{hi}")
        if not 0.0 <= replay < 1.0:
            raise ValueError(f"replay is a share of rows in [0, 1), got {replay}")
        self.stages, self.advance_at, self.replay = [tuple(s) for s in stages], advance_at, replay
        self.stage = 0

    @property
    def range(self) -> tuple[int, int]:
        return self.stages[self.stage]

    @property
    def final(self) -> bool:
        return self.stage == len(self.stages) - 1

    def records(self, rng: random.Random) -> int:
        """Records per row of the next batch."""
        lo, hi = self.range
        first = self.stages[0][0]
        if self.stage > 0 and first < lo and rng.random() < self.replay:
            return rng.randint(first, lo)
        return rng.randint(lo, hi)

    def update(self, accuracy: float) -> bool:
        """A validation result at the current stage -> whether the curriculum moved to the next stage."""
        if accuracy >= self.advance_at and not self.final:
            self.stage += 1
            return True
        return False

    def to_final(self) -> bool:
        """Jump to the held-out range (the budget is running out); whether it moved."""
        moved = not self.final
        self.stage = len(self.stages) - 1
        return moved


def kv_loss(model, ids: torch.Tensor, gen_length: int, mask_id: int, eos_id: int, generator: torch.Generator,
            shifted: bool, suffix_frac: float, value_weight: float) -> torch.Tensor:
    """The LLaDA SFT loss of `eval.tiny.train.masked_diffusion_loss` (same masking: only response tokens,
    each row at a ratio t ~ U(0, 1), a share `suffix_frac` of rows also masked from a random cut on as
    semi-AR decoding sees them; 1/p weights over R) with the value's digits weighted `value_weight` times.

    Why the weight: every other response token (the format, the name copied from the question, the eos
    padding) is learnt in tens of steps; the 4 digits are the only part that needs recall, and they are
    4 of 16 supervised positions. ids: (rows, P + R), no padding.
    """
    import torch.nn.functional as F

    from eval.tiny.train import MASK_EPS

    rows, L = ids.shape
    R = gen_length
    p = (1 - MASK_EPS) * torch.rand(rows, device=ids.device, generator=generator) + MASK_EPS  # (rows,)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, L - R:] = True
    masked = response & (torch.rand(ids.shape, device=ids.device, generator=generator) < p[:, None])  # (rows, L)
    if suffix_frac > 0:
        target_len = (ids[:, L - R:] != eos_id).sum(1)  # (rows,)
        cut = (torch.rand(rows, device=ids.device, generator=generator) * (target_len + 1)).long()
        suffix_row = torch.rand(rows, device=ids.device, generator=generator) < suffix_frac
        after = torch.arange(L, device=ids.device)[None, :] >= (L - R + cut)[:, None]
        masked = masked | (suffix_row[:, None] & after)
        p = torch.where(suffix_row, masked.sum(1).float() / R, p).clamp_min(1.0 / R)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy).logits  # (rows, L, vocab)
    # Dream: position i - 1 predicts token i; a response token's logits are then at L - R - 1 .. L - 2
    logits = logits[:, L - R - 1:L - 1] if shifted else logits[:, L - R:]  # (rows, R, vocab)
    weight = torch.ones(R, device=ids.device)
    weight[task.VALUE_OFFSET:task.VALUE_OFFSET + task.DIGITS] = value_weight
    # dense over the R response positions, zero where not masked: no boolean indexing, so no host sync per step
    weight = masked[:, L - R:].float() * (1.0 / p)[:, None] * weight[None, :] / R  # (rows, R)
    token_loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, L - R:].flatten(), reduction="none").view(rows, R)
    return (token_loss * weight).sum() / rows


def validate(model, tok, examples: list[dict], device: str, batch_size: int) -> float:
    """Exact-match accuracy of greedy generation (the sweep's sampler) on `examples`; bf16 autocast on CUDA,
    as the sweep runs the exported bf16 model."""
    from eval.tiny.evaluate import generate_texts

    was = model.training
    model.eval()
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            texts = generate_texts(model, tok, [task.prompt_of(e) for e in examples], device=device, settings=gen_for(model),
                                   batch_size=batch_size)
    finally:
        model.train(was)
    return sum(task.is_correct(t, e["answer"]) for t, e in zip(texts, examples)) / max(1, len(examples))


def gen_for(model) -> dict:
    from eval.tiny.evaluate import sampler_settings

    return sampler_settings(model, task.GEN)


def lr_at(args, step: int, progress: float) -> float:
    """Linear warmup over --warmup steps, then cosine by wall-clock progress to 0.1 x --lr."""
    return args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tok, args, t0: float, device: str, meta: dict, write=None) -> None:
    """Fine-tune `model` on kv-retrieval through the gated record curriculum until --train-until seconds
    after t0 (or --max-steps, or the final stage's validation reaching --stop-at). `meta` gets the learning
    curve ("curve": step, elapsed, stage range, mean loss since the last check, validation accuracy, lr) and
    the steps each stage was reached at ("stages"), so a run that fails still says where it stalled; `write`
    (optional) is called after each validation to save them."""
    vocab = task.Vocab(tok)
    arch = "dream" if model.config.model_type.lower() == "dream" else "llada"
    gen = torch.Generator(device=device).manual_seed(task.TRAIN_SEED)
    rng = random.Random(task.TRAIN_SEED)
    stages = [s for s in parse_stages(args.stages) if s[0] < args.records[0]] + [tuple(args.records)]
    cur = Curriculum(stages, args.advance_at, args.replay)
    val_sets: dict[int, list[dict]] = {}

    def val_set(stage: int) -> list[dict]:  # the held-out range: the validation seed's test-like set
        if stage not in val_sets:
            rng_range = cur.stages[stage]
            n = args.val_n if stage == len(cur.stages) - 1 else args.stage_val_n
            val_sets[stage] = task.range_examples(n, rng_range, VAL_SEED) if (args.toy or stage < len(cur.stages) - 1) \
                else task.test_examples(n, seed=VAL_SEED)
        return val_sets[stage]

    params = [p for p in model.parameters() if p.requires_grad]
    on_cuda = device.startswith("cuda")
    # fused: one kernel for the whole update instead of a few per tensor (small steps are launch-bound)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=on_cuda)
    budget = max(1.0, args.train_until - (time.time() - t0))
    start = time.time()
    model.train()
    step, window, last_val, since_val, val_gap = 0, [], time.time(), [], args.val_every
    meta.update(train_steps=0, train_tokens=0, val=[], curve=[], stages=[{"range": list(cur.range), "step": 0, "elapsed": 0.0}],
                recipe={k: getattr(args, k) for k in ("lr", "warmup", "batch_tokens", "max_rows", "stages", "advance_at",
                                                      "replay", "final_after", "value_weight", "suffix_frac", "stop_at")})

    def enter(reason: str) -> None:
        meta["stages"].append({"range": list(cur.range), "step": step, "elapsed": round(time.time() - t0, 1), "why": reason})
        log(f"curriculum: stage {cur.stage + 1}/{len(cur.stages)} records {cur.range[0]}-{cur.range[1]} ({reason})")

    def check(lr: float) -> bool:
        """Validate at the current stage, record the point, move the curriculum on if it passed; whether
        training should stop (the held-out range reached --stop-at)."""
        nonlocal since_val, last_val, val_gap
        rng_range, was_final = cur.range, cur.final
        v0 = time.time()
        acc = validate(model, tok, val_set(cur.stage), device, args.eval_batch)
        val_gap = max(args.val_every, 3 * (time.time() - v0))  # validation <= ~1/4 of the time at long stages
        point = {"step": step, "elapsed": round(time.time() - t0, 1), "records": list(rng_range),
                 "loss": round(float(torch.stack(since_val).mean()), 4) if since_val else None, "accuracy": acc, "lr": lr}
        since_val = []
        meta["curve"].append(point)
        if was_final:
            meta["val"].append({"step": step, "elapsed": point["elapsed"], "accuracy": acc})
        log(f"validation step {step} records {rng_range[0]}-{rng_range[1]}: {100 * acc:.1f}% of {len(val_set(cur.stage))}")
        last_val = time.time()
        if write is not None:
            write()
        if was_final and acc >= args.stop_at:
            meta["stopped"] = f"validation {acc:.3f} >= {args.stop_at}"
            return True
        if cur.update(acc):
            enter(f"validation {100 * acc:.1f}% >= {100 * args.advance_at:.0f}%")
        return False

    stop = check(0.0)  # step 0: where the model starts (a model that already passes moves on at once)
    while not stop:
        now = time.time()
        if now - t0 >= args.train_until or (args.max_steps and step >= args.max_steps):
            break
        progress = min(1.0, max((now - start) / budget, step / args.max_steps if args.max_steps else 0.0))  # the nearer end
        if progress >= args.final_after and cur.to_final():
            enter(f"{100 * args.final_after:.0f}% of the training budget spent")
        lr = lr_at(args, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        n_rec = cur.records(rng)
        length = len(vocab.head) + n_rec * task.RECORD_TOKENS + 13 + task.GEN["gen_length"]
        rows = max(args.min_rows, min(args.max_rows, args.batch_tokens // length))
        ids = task.train_batch(vocab, gen, rows, n_rec, task.GEN["gen_length"], device)  # (rows, P + R)
        with torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
            loss = kv_loss(model, ids, task.GEN["gen_length"], tok.mask_token_id, tok.eos_token_id, gen, arch == "dream",
                           args.suffix_frac, args.value_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        meta["train_steps"], meta["train_tokens"] = step, meta["train_tokens"] + ids.numel()
        window.append(loss.detach())
        since_val.append(loss.detach())
        if step % args.log_every == 0:
            mean = float(torch.stack(window).mean())
            window = []
            if not math.isfinite(mean):
                raise SystemExit(f"loss is {mean} at step {step}; lower --lr (now {args.lr})")
            log(f"train step {step} loss {mean:.4f} lr {lr:.2e} stage {cur.range[0]}-{cur.range[1]} records {n_rec} rows {rows} "
                f"tokens {meta['train_tokens'] / 1e6:.1f}M elapsed {time.time() - t0:.0f}s")
        if ((step % args.val_steps == 0) if args.val_steps else (time.time() - last_val >= val_gap)) and check(lr):
            break
    meta["train_seconds"] = round(time.time() - start, 1)
    meta["final_stage"] = list(cur.range)
    model.eval()


# ----------------------------------------------------------------------------- sweep
def sweep(model, tok, args, t0: float, device: str, report: dict, write) -> None:
    from dllm_cache import cache_enabled, cache_stats
    from eval.frontier.run import ForwardCounter, row_flops, wilson_interval
    from eval.tiny.evaluate import generate_texts, token_lengths

    examples = task.test_examples(args.n) if not args.toy else \
        [task.make_example(random.Random(f"toy/{i}"), args.records[1]) for i in range(args.n)]
    prompts = [task.prompt_of(e) for e in examples]
    lengths = token_lengths(tok, prompts)
    report["mean_prompt_tokens"] = sum(P * k for P, k in lengths.items()) / len(prompts)
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
        flops = row_flops(model, lengths, gen, cfg, stats, steps_run if cfg is None else None)
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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="proxy model folder to start from (eval/tiny/model, eval/tiny/dream_model)")
    p.add_argument("--name", required=True, help="model key in the reports, e.g. llada-kv")
    p.add_argument("--out", type=Path, required=True, help="folder for the log's files, the model and frontier_<name>.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--start", type=float, default=None, help="epoch seconds the budgets count from (default: now)")
    p.add_argument("--train-until", type=float, default=250.0, help="stop training this many seconds after --start")
    p.add_argument("--sweep-until", type=float, default=520.0, help="start no sweep row that would end after this")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop training after this many steps (0: time only); the LR schedule follows the nearer end")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per training batch (rows = this // row length)")
    p.add_argument("--max-rows", type=int, default=128)
    p.add_argument("--min-rows", type=int, default=8, help="rows per batch at least (long stages)")
    p.add_argument("--records", type=int, nargs=2, default=list(task.RECORDS),
                   help="record range of the held-out set (the last stage)")
    p.add_argument("--stages", default=",".join(f"{a}-{b}" for a, b in STAGES),
                   help="curriculum record ranges before --records (those starting at or above its low end are dropped)")
    p.add_argument("--advance-at", type=float, default=0.9, help="validation accuracy that moves the curriculum on")
    p.add_argument("--replay", type=float, default=0.2, help="share of rows drawn from the record counts already passed")
    p.add_argument("--final-after", type=float, default=0.8,
                   help="share of the training budget after which training moves to --records whatever the stage")
    p.add_argument("--value-weight", type=float, default=4.0, help="loss weight of the value's digits (others 1)")
    p.add_argument("--suffix-frac", type=float, default=0.5, help="share of rows masked from a random cut on")
    p.add_argument("--val-n", type=int, default=128, help="validation examples at the held-out range")
    p.add_argument("--stage-val-n", type=int, default=64, help="validation examples at an earlier stage's range")
    p.add_argument("--val-every", type=float, default=4.0, help="seconds between validation runs")
    p.add_argument("--val-steps", type=int, default=0, help="validate every this many steps instead (0: by --val-every)")
    p.add_argument("--stop-at", type=float, default=0.99, help="stop training once validation at the held-out range reaches this")
    p.add_argument("--n", type=int, default=task.N_TEST, help="held-out examples in the sweep")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--toy", action="store_true", help="CPU smoke run: short contexts from --records, few rows")
    p.add_argument("--only", default=None, help="comma-separated setting names to sweep (uncached rows always run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        train(model, tok, args, t0, args.device, report["training"], write)
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
