"""Quality of the small trained model with and without the cache, on the held-out synthetic sets.

    PYTHONPATH=. python -m eval.tiny.evaluate --model eval/tiny/model --n 200 --device cuda \
        --out eval/results/tiny_quality.json

Runs the uncached sampler, the default cache (`CacheConfig()`: Kp=100, Kr=8, ratio 0.25), a
sweep of transfer_ratio (Kr=8) and a sweep of response_interval Kr (ratio 0.25), on
`eval/data/arith_synth/test.jsonl` and `eval/data/hotpotqa_synth/test.jsonl` (regenerated from
the seeds when missing). For each (configuration, task): exact-match accuracy, agreement of the
answers with the uncached run, wall time, the cache's statistics (fraction of response tokens
recomputed on partial steps) and analytic FLOPs from `dllm_cache.analysis.flops` (when available).
Writes the JSON, a markdown table (same name, .md) and a plot (same name, .png).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import tasks

# Generation settings per family (GSM8K's and HotpotQA's in dLLM-Cache's LLaDA-Instruct runs):
# response length, denoising steps, semi-AR block length (LLaDA only: Dream's sampler has no blocks).
GEN_SETTINGS = {
    "arith": {"gen_length": 256, "steps": 256, "block_length": 8},
    "hotpot": {"gen_length": 32, "steps": 32, "block_length": 32},
}


def parse_gen(value: str, flag: str) -> dict:
    """A `--<flag> L,S,B` option -> {"gen_length", "steps", "block_length"}; anything but three
    integers is an error that names the option (a short list is never padded from the defaults)."""
    try:
        length, steps, block = (int(v) for v in value.split(","))
    except ValueError:
        raise SystemExit(f"--{flag} takes gen_length,steps,block_length as three integers, got {value!r}") from None
    return {"gen_length": length, "steps": steps, "block_length": block}


def sampler_settings(model, settings: dict) -> dict:
    """`settings` as the model's sampler takes them (Dream's has no semi-AR blocks)."""
    from dllm_cache.hooks import family_of

    if family_of(model) == "dream":
        return {k: v for k, v in settings.items() if k != "block_length"}
    return dict(settings)
RATIOS = (0.1, 0.25, 0.5, 1.0)
INTERVALS = (2, 4, 8, 16)


def load_examples(family: str, n: int, hotpot_distractors: int | None = None) -> list[dict]:
    """The first n held-out examples (from the jsonl file, or regenerated from the test seed).

    `hotpot_distractors` replaces the hotpot set by test-seed examples with that many distractor
    paragraphs (for context-length studies and quick tests).
    """
    if family == "hotpot" and hotpot_distractors is not None:
        return [
            tasks.make_hotpot(tasks.example_rng("hotpot", f"test-d{hotpot_distractors}", tasks.TEST_SEED, i), hotpot_distractors)
            for i in range(n)
        ]
    return tasks.test_examples(family, n)


@torch.no_grad()
def generate_texts(
    model, tok, prompts: list[str], *, device: str, settings: dict, batch_size: int, progress: bool = False, desc: str = ""
) -> list[str]:
    """Generated text after each prompt (special tokens dropped). Prompts are sorted by length and
    batched with left padding + attention mask; results come back in the input order."""
    from dllm_cache.sampling.generate import generate

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, disable=not progress, desc=desc, leave=False):
        enc = tok([prompts[i] for i in idx], padding=True, return_tensors="pt", add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        out = generate(model, ids, mask, temperature=0.0, **sampler_settings(model, settings))  # (batch, P + gen)
        for row, i in enumerate(idx):
            texts[i] = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True)
    return texts


def accuracy_of(
    model,
    tok,
    family: str,
    examples: list[dict],
    *,
    device: str,
    settings: dict,
    batch_size: int,
    progress: bool = False,
    desc: str = "",
) -> tuple[float, list[str]]:
    prompts = [tasks.prompt_and_target(family, ex)[0] for ex in examples]
    texts = generate_texts(
        model, tok, prompts, device=device, settings=settings, batch_size=batch_size, progress=progress, desc=desc
    )
    correct = [tasks.is_correct(family, text, ex["answer"]) for text, ex in zip(texts, examples)]
    return sum(correct) / max(1, len(correct)), texts


def cache_configs(sweep: bool = True, thresholds: tuple[float, ...] = ()) -> list[tuple[str, object, float | None]]:
    """(name, CacheConfig or None, sampler threshold or None): uncached, default, both sweeps
    (unless `sweep` is False) and, per confidence threshold (parallel decoding), uncached,
    default cache and Kr=2 with that threshold."""
    from dllm_cache import CacheConfig

    default = CacheConfig()
    configs: list[tuple[str, object, float | None]] = [("uncached", None, None), ("default", default, None)]
    for t in thresholds:
        configs += [(f"uncached thr={t}", None, t), (f"default thr={t}", default, t),
                    (f"Kr=2 thr={t}", CacheConfig(response_interval=2), t)]
    if not sweep:
        return configs
    seen = {default}
    for r in RATIOS:
        cfg = CacheConfig(prompt_interval=default.prompt_interval, response_interval=default.response_interval, transfer_ratio=r)
        if cfg not in seen:
            configs.append((f"ratio={r}", cfg, None))
            seen.add(cfg)
    for kr in INTERVALS:
        cfg = CacheConfig(prompt_interval=default.prompt_interval, response_interval=kr, transfer_ratio=default.transfer_ratio)
        if cfg not in seen:
            configs.append((f"Kr={kr}", cfg, None))
            seen.add(cfg)
    return configs


def token_lengths(tok, prompts: list[str]) -> Counter:
    """How many prompts have each length (tokens, unpadded): what the per-length FLOPs are summed over."""
    return Counter(len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"])


def prompt_lengths(tok, family: str, examples: list[dict]) -> Counter:
    """token_lengths of a proxy task's examples."""
    return token_lengths(tok, [tasks.prompt_and_target(family, ex)[0] for ex in examples])


def mean_flops(model, lengths: Counter, settings: dict, config) -> float:
    """Mean analytic FLOPs of one generation (batch 1, each example's unpadded prompt length), with
    the block length the model's sampler actually uses."""
    from dllm_cache.analysis import flops

    dims = flops.ModelDims.from_config(model.config)
    block = sampler_settings(model, settings).get("block_length")
    total = sum(n * flops.generation_flops(dims, 1, P, settings["gen_length"], settings["steps"], config, block)
                for P, n in lengths.items())
    return total / max(1, sum(lengths.values()))


def analytic_flops(model, tok, family: str, examples: list[dict], settings: dict, config) -> float | None:
    """mean_flops over `examples`; None if unavailable (the column is optional here)."""
    try:
        return mean_flops(model, prompt_lengths(tok, family, examples), settings, config)
    except Exception as err:  # the FLOPs column is optional
        print(f"[evaluate] FLOPs unavailable: {err!r}", file=sys.stderr)
        return None


def load_model(path: str, device: str, dtype: torch.dtype):
    from transformers import AutoModel

    import dllm_cache  # noqa: F401  (registers the LLaDA/Dream classes with AutoModel)
    from dllm_cache.shipped import ready_model_dir

    from .tokenizer import load_or_build

    # the shipped models' weights are packed (*.safetensors.xz): load their unpacked copy
    model = AutoModel.from_pretrained(ready_model_dir(path), dtype=dtype).to(device).eval()
    return model, load_or_build(path)


answer_key = tasks.answer_key


def run(
    model,
    tok,
    *,
    n: int,
    device: str,
    families=("arith", "hotpot"),
    batch_size: int | None = None,
    progress: bool = True,
    settings: dict | None = None,
    hotpot_distractors: int | None = None,
    sweep: bool = True,
    thresholds: tuple[float, ...] = (),
) -> dict:
    """Accuracy of every cache configuration on every family -> report dict (see module docstring)."""
    from dllm_cache import cache_enabled, cache_stats

    gen_settings = {f: dict(GEN_SETTINGS[f], **(settings or {}).get(f, {})) for f in families}
    data = {f: load_examples(f, n, hotpot_distractors) for f in families}
    results = []
    uncached_texts: dict[str, list[str]] = {}
    configs = cache_configs(sweep, thresholds)
    for name, cfg, threshold in tqdm(configs, desc="configs", disable=not progress):
        for family in families:
            settings = dict(gen_settings[family], threshold=threshold) if threshold is not None else gen_settings[family]
            forwards = _count_forwards(model)
            bs = batch_size or (64 if family == "arith" else 16)
            stats = None
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.time()
            with contextlib.nullcontext() if cfg is None else cache_enabled(model, cfg):
                acc, texts = accuracy_of(
                    model,
                    tok,
                    family,
                    data[family],
                    device=device,
                    settings=settings,
                    batch_size=bs,
                    progress=progress,
                    desc=f"{name}/{family}",
                )
                if cfg is None and threshold is None:
                    uncached_texts[family] = texts
                if cfg is not None:
                    stats = cache_stats(model)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.time() - t0
            n_forwards = forwards.finish()
            base = uncached_texts.get(family)
            agree = (
                None
                if base is None
                else sum(answer_key(family, a) == answer_key(family, b) for a, b in zip(texts, base)) / len(texts)
            )
            row = {
                "config": name,
                "task": family,
                "prompt_interval": None if cfg is None else cfg.prompt_interval,
                "response_interval": None if cfg is None else cfg.response_interval,
                "transfer_ratio": None if cfg is None else cfg.transfer_ratio,
                "threshold": threshold,
                "accuracy": acc,
                "n": len(texts),
                "agreement_with_uncached": agree,
                "seconds": round(seconds, 3),
                "recompute_fraction": None if stats is None else stats.get("recompute_fraction"),
                "cache_stats": stats,
                # steps per generation: fixed without a threshold; with one, as many as decoding needed
                "steps_per_generation": n_forwards / max(1, -(-len(texts) // bs)),
                # analytic FLOPs assume the fixed schedule: not defined under threshold decoding
                "flops_per_example": None if threshold is not None else analytic_flops(
                    model, tok, family, data[family], settings, cfg),
                "samples": [{"generated": t, "answer": ex["answer"]} for t, ex in zip(texts[:3], data[family][:3])],
            }
            results.append(row)
    for row in results:  # FLOPs relative to the uncached run of the same task
        ref = next(r for r in results if r["task"] == row["task"] and r["config"] == "uncached")
        row["steps_vs_uncached"] = row["steps_per_generation"] / ref["steps_per_generation"]
        f, f0 = row["flops_per_example"], ref["flops_per_example"]
        row["flops_vs_uncached"] = None if f is None or not f0 else f / f0
    summary = {f: {r["config"]: r["accuracy"] for r in results if r["task"] == f} for f in families}
    return {
        "n": n,
        "families": list(families),
        "generation": gen_settings,
        "hotpot_distractors": hotpot_distractors,
        "results": results,
        "summary": summary,
    }


class _count_forwards:
    """Counts the model's forward calls (denoising steps, times 2 under CFG) until finish()."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.n += 1

    def finish(self) -> int:
        self.handle.remove()
        return self.n


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    fams = report["families"]
    head = ["config", "Kp", "Kr", "ratio", "threshold"]
    head += [f"{f} acc" for f in fams] + [f"{f} agree" for f in fams]
    head += [f"{f} FLOPs vs uncached" for f in fams] + [f"{f} steps" for f in fams]
    head += [f"{f} recomputed" for f in fams] + [f"{f} s" for f in fams]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    configs = list(dict.fromkeys(r["config"] for r in report["results"]))
    for name in configs:
        rows = {r["task"]: r for r in report["results"] if r["config"] == name}
        first = next(iter(rows.values()))
        cells = [name, _fmt(first["prompt_interval"]), _fmt(first["response_interval"]), _fmt(first["transfer_ratio"]),
                 _fmt(first.get("threshold"))]
        cells += [_fmt(rows[f]["accuracy"], True) for f in fams]
        cells += [_fmt(rows[f]["agreement_with_uncached"], True) for f in fams]
        cells += [_fmt(rows[f]["flops_vs_uncached"]) for f in fams]
        cells += [_fmt(rows[f].get("steps_per_generation")) for f in fams]
        cells += [_fmt(rows[f]["recompute_fraction"], True) for f in fams]
        cells += [_fmt(rows[f]["seconds"]) for f in fams]
        lines.append("| " + " | ".join(cells) + " |")
    gen = "; ".join(
        f"{f}: gen_length {s['gen_length']}, steps {s['steps']}, block {s['block_length']}"
        for f, s in report["generation"].items()
    )
    meta = f"Model `{report.get('model')}`, n = {report['n']} per task, device {report.get('device')}, {gen}."
    if report.get("hotpot_distractors") is not None:
        meta += f" Hotpot: generated examples with {report['hotpot_distractors']} distractors (not the test file)."
    note = (
        "`agree`: share of answers equal to the uncached run's; `recomputed`: response tokens x layers "
        "recomputed on partial steps / all (cache_stats); FLOPs are analytic (dllm_cache.analysis.flops), batch 1, "
        "for the fixed schedule (not defined with a threshold); `steps`: model forwards per generation "
        "(a threshold unmasks every token above it per step, so fewer steps)."
    )
    return "\n".join([meta, "", *lines, "", note, ""])


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any(r.get("threshold") is not None for r in report["results"]):
        return plot_thresholds(report, path, plt)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"arith": "tab:blue", "hotpot": "tab:orange"}
    res = report["results"]
    for ax, key, fixed_key, fixed, values, label in (
        (axes[0], "transfer_ratio", "response_interval", 8, RATIOS, "transfer_ratio (Kr = 8)"),
        (axes[1], "response_interval", "transfer_ratio", 0.25, INTERVALS, "response_interval Kr (ratio = 0.25)"),
    ):
        for fam in report["families"]:
            pts = sorted((r[key], r["accuracy"]) for r in res if r["task"] == fam and r[key] in values
                         and r[fixed_key] == fixed and r.get("threshold") is None)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors.get(fam), label=f"{fam} cached")
            base = next(r["accuracy"] for r in res if r["task"] == fam and r["config"] == "uncached")
            ax.axhline(base, linestyle="--", color=colors.get(fam), alpha=0.7, label=f"{fam} uncached")
        ax.set_xlabel(label)
        if key == "response_interval":
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(values), [str(v) for v in values])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Tiny LLaDA: accuracy with dLLM-Cache (n = {report['n']} per task)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_thresholds(report: dict, path: Path, plt) -> None:
    """Parallel decoding: accuracy against denoising steps per generation, one line per cache
    setting (the point at 'steps' = the fixed schedule is the run without a threshold)."""
    fams = report["families"]
    fig, axes = plt.subplots(1, len(fams), figsize=(7 * len(fams), 4.5), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        rows = [r for r in report["results"] if r["task"] == fam]
        for setting in dict.fromkeys(r["config"].split(" thr=")[0] for r in rows):
            pts = sorted((r["steps_per_generation"], r["accuracy"], r.get("threshold")) for r in rows
                         if r["config"].split(" thr=")[0] == setting)
            if len(pts) < 2:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=setting)
            for steps, acc, thr in pts:
                ax.annotate("fixed" if thr is None else f"thr {thr:g}", (steps, acc), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set(xlabel="denoising steps per generation", ylabel="exact-match accuracy", title=fam, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Tiny LLaDA: threshold decoding, with and without cache (n = {report['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _triple(settings: dict) -> str:
    return f"{settings['gen_length']},{settings['steps']},{settings['block_length']}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="folder with the exported model and tokenizer")
    p.add_argument("--from-json", default=None, help="only re-render the table and plot of an existing report (no model needed)")
    p.add_argument("--no-plot", action="store_true", help="skip the .png (e.g. to keep the files on a GPU run few)")
    p.add_argument("--no-table", action="store_true", help="skip the .md (render it later with --from-json)")
    p.add_argument("--n", type=int, default=tasks.N_TEST, help="examples per task")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (arith) / 16 (hotpot)")
    p.add_argument("--families", default="arith,hotpot")
    p.add_argument("--out", default="eval/results/tiny_quality.json")
    p.add_argument(
        "--arith-gen",
        default=None,
        metavar="L,S,B",
        help="arith gen_length,steps,block_length (default {})".format(_triple(GEN_SETTINGS["arith"])),
    )
    p.add_argument(
        "--hotpot-gen",
        default=None,
        metavar="L,S,B",
        help="hotpot gen_length,steps,block_length (default {})".format(_triple(GEN_SETTINGS["hotpot"])),
    )
    p.add_argument(
        "--hotpot-distractors",
        type=int,
        default=None,
        help="use generated test-seed hotpot examples with this many distractors instead of the file",
    )
    p.add_argument("--threshold", type=float, nargs="+", default=[],
                   help="also run parallel decoding (LLaDA sampler threshold) uncached, default cache and Kr=2")
    p.add_argument("--no-sweep", action="store_true", help="skip the ratio / Kr sweeps (uncached, default, thresholds)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        write_outputs(report, out, table=True, figure=not args.no_plot, data=Path(args.from_json) != out)
        return report
    if not args.model:
        p.error("--model is required (or --from-json to re-render a report)")
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, tok = load_model(args.model, args.device, getattr(torch, dtype_name))
    t0 = time.time()
    settings = {}
    for family, value in (("arith", args.arith_gen), ("hotpot", args.hotpot_gen)):
        if value:
            settings[family] = parse_gen(value, f"{family}-gen")
    report = run(
        model,
        tok,
        n=args.n,
        device=args.device,
        families=tuple(args.families.split(",")),
        batch_size=args.batch_size,
        progress=not args.no_progress,
        settings=settings,
        hotpot_distractors=args.hotpot_distractors,
        sweep=not args.no_sweep,
        thresholds=tuple(args.threshold),
    )
    report.update(
        model=args.model,
        device=args.device,
        dtype=dtype_name,
        seconds=round(time.time() - t0, 1),
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    )
    try:
        from dllm_cache import CacheConfig

        report["default_config"] = asdict(CacheConfig())
    except Exception:
        pass
    write_outputs(report, out, table=not args.no_table, figure=not args.no_plot)
    return report


def write_outputs(report: dict, out: Path, *, table: bool = True, figure: bool = True, data: bool = True) -> None:
    """The JSON at `out`, the markdown table and the plot beside it (same name, .md / .png)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if data:
        out.write_text(json.dumps(report, indent=2, default=str))
        written.append(out)
    if table:
        out.with_suffix(".md").write_text(markdown(report))
        written.append(out.with_suffix(".md"))
    if figure:
        try:
            plot(report, out.with_suffix(".png"))
            written.append(out.with_suffix(".png"))
        except Exception as err:  # the plot is a convenience; the JSON and table are the record
            print(f"[evaluate] plot failed: {err!r}", file=sys.stderr)
    print(markdown(report))
    print(f"[evaluate] wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main(sys.argv[1:])
