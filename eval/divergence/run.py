"""Where a cached generation first leaves the uncached one (issue 28, item 4: "which positions, which steps,
which refresh").

Accuracy and paired counts say whether a cached setting changes answers; they do not say why. This runner
decodes the same batch twice, uncached and cached, records the token ids every denoising step reads (a
forward pre-hook: one forward per step), and for each problem finds the first step whose commits differ:

- the step's index and kind under the cache's schedule (full / response refresh / prompt refresh / partial),
  and the steps since the last response refresh (0 = the refresh step itself; Kr - 1 = the stalest);
- the first differing position: its semi-AR block and its offset in the block, and how many steps the
  block had been decoding;
- whether the final answer changed, and which way (right only cached / right only uncached).

If the cache's staleness drives the divergences, they pile up at large "since refresh" and on partial steps
beyond those kinds' share of the steps; if they are spread like the steps themselves, the cache is a small
perturbation that a near-tie in the model's confidences turns into a different token.

    PYTHONPATH=. python -m eval.divergence --n 96       # the shipped LLaDA proxy, CPU -> eval/results/divergence_cpu.{json,md}
    PYTHONPATH=. python -m eval.divergence --model <folder> --device cuda --n 500 --out eval/results/divergence_<name>

Decoding as `eval/adaptive_interval` runs it (gen 256, block 8, greedy, threshold 0.9, one batch of prompts
sorted by length, left padded, stop at end-of-text), so its rows pair with that study's; `--threshold 0`
decodes one token per step instead, as the frontier's step-decoding rows do (where the larger proxy's
2-point loss was seen).

    PYTHONPATH=. python -m eval.divergence --model <folder> --device cuda --n 500 --threshold 0 \
        --out eval/results/divergence_<name>_steps
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from dllm_cache import CacheConfig, cache_enabled, shipped
from dllm_cache.analysis.flops import step_kind
from dllm_cache.analysis.paired import correct_indices, paired_object
from dllm_cache.sampling.generate import generate
from eval.block_start.run import BLOCK, GEN, cpu_meta, result_path, sorted_batches

RESULTS = Path(__file__).resolve().parents[1] / "results"
THRESHOLD = 0.9
SETTINGS = {
    "default (Kp 100, Kr 8, r 0.25, frontier)": CacheConfig(),
    "paper default (Kp 100, Kr 8, r 0.25, paper)": CacheConfig(selection="paper"),
}


class StepInputs:
    """Records the token ids of every forward of `model` inside a `with` block (a denoising step is one
    forward): a list of (batch, L) int32 CPU tensors."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def _hook(self, _module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.steps.append(ids.detach().to("cpu", torch.int32).clone())

    def __enter__(self) -> StepInputs:
        self.handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def decode(model, tok, prompts: list[str], config, device: str, threshold: float | None = THRESHOLD
           ) -> tuple[list[torch.Tensor], torch.Tensor, int, list[int]]:
    """One batch, uncached (config None) or cached, at `threshold` (None: one token per step): (the ids each step
    read, then the final sequences appended; the final sequences; the padded prompt length; the batch order: row r
    is prompts[order[r]])."""
    ((order, enc),) = sorted_batches(tok, prompts, len(prompts))  # one batch, ordered as eval/adaptive_interval's
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    opts = dict(gen_length=GEN, block_length=BLOCK, steps=GEN, threshold=threshold, temperature=0.0, stop_at_eos=True)
    with StepInputs(model) as rec:
        if config is None:
            out = generate(model, ids, mask, **opts)
        else:
            with cache_enabled(model, config):
                out = generate(model, ids, mask, **opts)
    return rec.steps + [out.to("cpu", torch.int32)], out.cpu(), ids.shape[1], order


def first_divergence(u: list[torch.Tensor], c: list[torch.Tensor], row: int) -> tuple[int, int] | None:
    """(step, position) of the first step whose commits differ for `row`: the smallest s with the ids after step s
    (those step s + 1 reads, or the final sequence) differing, and the first position where they do; None if the
    row's final sequences are equal. Both lists end with the final sequences, so a run that stopped sooner still
    compares: a row in the same state in both runs is done in both or in neither."""
    if torch.equal(u[-1][row], c[-1][row]):
        return None
    n = min(len(u), len(c)) - 1  # steps both runs took
    for s in range(n):
        if not torch.equal(u[s + 1][row], c[s + 1][row]):
            return s, int((u[s + 1][row] != c[s + 1][row]).nonzero()[0, 0])
    return n, int((u[-1][row] != c[-1][row]).nonzero()[0, 0])


def row_steps(recorded: list[torch.Tensor], P: int, mask_id: int) -> list[int]:
    """Per batch row: the steps it needed, the first s whose ids after step s hold no mask in the response (the
    whole run's steps if none). A batch runs until its slowest row is done, so under a threshold the batch's steps
    (what the FLOPs follow) can grow with one row while the others are unchanged."""
    done = [(ids[:, P:] != mask_id).all(dim=1) for ids in recorded[1:]]
    n = len(done)
    return [next((s + 1 for s in range(n) if bool(done[s][row])), n) for row in range(recorded[0].shape[0])]


def _spread(steps: list[int]) -> dict:
    ordered = sorted(steps)
    return {"mean": sum(steps) / len(steps), "median": ordered[len(ordered) // 2], "max": ordered[-1]}


def locate(u: list[torch.Tensor], c: list[torch.Tensor], P: int, config: CacheConfig, mask_id: int) -> list[dict | None]:
    """Per batch row: where the cached run first left the uncached one (module docstring), or None."""
    out = []
    for row in range(u[-1].shape[0]):
        hit = first_divergence(u, c, row)
        if hit is None:
            out.append(None)
            continue
        step, pos = hit
        offset = pos - P
        block = offset // BLOCK
        # the block started decoding at the first step that read the previous block with no mask left
        lo, hi = P + (block - 1) * BLOCK, P + block * BLOCK
        started = 0 if block == 0 else next((s for s in range(step + 1) if not bool((u[s][row, lo:hi] == mask_id).any())),
                                            step)
        out.append({"step": step, "kind": step_kind(step, config), "since_refresh": step % config.response_interval,
                    "block": block, "offset_in_block": offset % BLOCK, "steps_into_block": step - started})
    return out


def study(model, tok, problems: list[dict], device: str, threshold: float | None = THRESHOLD) -> dict:
    prompts = [shipped.arith_prompt(p["question"]) for p in problems]
    answers = [shipped.final_number(p["answer"]) for p in problems]
    n = len(problems)

    def right(out: torch.Tensor, P: int, order: list[int]) -> tuple[list[int], list[str]]:
        texts = [""] * n
        for row, i in enumerate(order):
            texts[i] = tok.decode(out[row, P:].tolist(), skip_special_tokens=True)
        keys = [shipped.final_number(t) for t in texts]
        return correct_indices(k is not None and k == a for k, a in zip(keys, answers)), keys

    t0 = time.perf_counter()
    u, u_out, P, order = decode(model, tok, prompts, None, device, threshold)
    u_ok, u_keys = right(u_out, P, order)
    u_rows = row_steps(u, P, tok.mask_token_id)
    rows, seconds = [], {"uncached": round(time.perf_counter() - t0, 1)}
    for name, config in SETTINGS.items():
        t0 = time.perf_counter()
        c, c_out, _, _ = decode(model, tok, prompts, config, device, threshold)
        seconds[name] = round(time.perf_counter() - t0, 1)
        c_ok, c_keys = right(c_out, P, order)
        where = locate(u, c, P, config, tok.mask_token_id)
        problems_out = []
        u_set, c_set = set(u_ok), set(c_ok)
        for row, i in enumerate(order):
            if where[row] is not None:
                problems_out.append({"problem": i, **where[row], "answer_changed": u_keys[i] != c_keys[i],
                                     "right_uncached": i in u_set, "right_cached": i in c_set})
        steps_u = len(u) - 1
        kinds_all = Counter(step_kind(s, config) for s in range(steps_u))
        rows.append({"setting": name, "config": repr(config), "response_interval": config.response_interval,
                     "n": n, "correct_uncached": len(u_ok),
                     "correct_cached": len(c_ok), "paired": paired_object(c_ok, u_ok, n),
                     "diverged": len(problems_out), "answers_changed": sum(p["answer_changed"] for p in problems_out),
                     "steps_uncached": steps_u, "steps_cached": len(c) - 1,
                     "row_steps_uncached": _spread(u_rows), "row_steps_cached": _spread(row_steps(c, P, tok.mask_token_id)),
                     "step_kind_share": {k: v / steps_u for k, v in kinds_all.items()},
                     "problems": problems_out})
    return {"n": n, "threshold": threshold, "seconds": seconds, "rows": rows}


def _hist(items, key, keys) -> str:
    count = Counter(p[key] for p in items)
    return ", ".join(f"{k}: {count.get(k, 0)}" for k in keys)


def markdown(report: dict) -> str:
    decoding = "one token per step" if report["threshold"] is None else f"threshold {report['threshold']}"
    lines = ["# Where cached generations first leave the uncached ones", "",
             f"{report['meta']['machine']}; model {report['meta']['model']}; the first {report['n']} held-out arith "
             f"problems; gen {GEN}, block {BLOCK}, greedy, {decoding}, one sorted batch, stop at "
             f"end-of-text. Command: `{report['command']}`. Seconds: {report['seconds']}.", ""]
    for r in report["rows"]:
        p = r["paired"]
        items = r["problems"]
        flips = [x for x in items if x["right_uncached"] != x["right_cached"]]
        kr = r.get("response_interval", 8)  # rows written before the field: both settings' Kr 8
        lines += [f"## {r['setting']}", "",
                  f"- correct: uncached {r['correct_uncached']}/{r['n']}, cached {r['correct_cached']}/{r['n']} "
                  f"(right only cached / only uncached {p['cached_right_uncached_wrong']} / "
                  f"{p['cached_wrong_uncached_right']}, exact McNemar p {p['p_value']:.3g})",
                  f"- sequences that differ anywhere: {r['diverged']}/{r['n']}; final answers that differ: "
                  f"{r['answers_changed']}; steps per batch: uncached {r['steps_uncached']}, cached {r['steps_cached']}"
                  + ("" if "row_steps_cached" not in r else "; steps per row (mean / median / max): uncached "
                     + " / ".join(f"{v:g}" for v in r["row_steps_uncached"].values()) + ", cached "
                     + " / ".join(f"{v:g}" for v in r["row_steps_cached"].values())),
                  "- first divergence, by step kind: " + _hist(items, "kind", ("full", "response", "prompt", "partial"))
                  + "; the kinds' share of the uncached run's steps: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["step_kind_share"].items())),
                  "- by steps since the response refresh: " + _hist(items, "since_refresh", range(kr)),
                  "- by block: " + _hist(items, "block", sorted({x["block"] for x in items})),
                  "- by steps into the block: " + _hist(items, "steps_into_block",
                                                        sorted({x["steps_into_block"] for x in items})),
                  f"- the {len(flips)} problems whose correctness flipped: by since refresh "
                  + _hist(flips, "since_refresh", range(kr)) + "; by block " + _hist(flips, "block",
                                                                                     sorted({x["block"] for x in flips})),
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--model", default=None, help="a LLaDA or Dream proxy folder (default: the shipped LLaDA proxy)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="confidence at which a masked token commits (several per step); 0: one token per step")
    ap.add_argument("--out", type=Path, default=RESULTS / "divergence_cpu")
    args = ap.parse_args(argv)
    from eval.tiny.evaluate import load_model

    torch.manual_seed(0)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model, tok = load_model(args.model or str(shipped.default_model_dir()), args.device, dtype)
    with open(shipped.default_prompts_file()) as f:
        problems = [json.loads(line) for _, line in zip(range(args.n), f)]
    report = study(model, tok, problems, args.device, args.threshold or None)
    report["meta"] = {**cpu_meta(), "model": args.model or str(shipped.default_model_dir()), "device": args.device}
    if args.device.startswith("cuda"):
        report["meta"]["machine"] = f"{torch.cuda.get_device_name()}, bf16 (host: {report['meta']['machine']})"
    report["command"] = "PYTHONPATH=. python -m eval.divergence " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result_path(args.out, ".json").write_text(json.dumps(report, indent=1) + "\n")
    result_path(args.out, ".md").write_text(markdown(report))
    print(markdown(report))
    return 0
