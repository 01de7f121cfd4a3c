"""`dllm-cache generate | bench | serve | eval`.

generate: the main job. Runs the same prompts uncached and cached on one model and prints
          wall time, analytic FLOPs, speedup and how far the cached output agrees. Defaults to
          the small trained LLaDA and held-out arithmetic problems shipped with the package.
bench:    speed/FLOPs comparison across shapes, batches and cache settings (dllm_cache.bench);
          writes to ./dllm_cache_results unless --out-dir says otherwise.
serve:    an OpenAI-compatible HTTP server that batches concurrent requests through the cache
          (dllm_cache.serving; `pip install "dllm-cache[serve]"`).
eval:     lm-eval with the `dllm_cache` model and our local tasks registered
          (dllm_cache.integrations.lm_eval; `pip install "dllm-cache[eval]"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time

import torch

from . import shipped
from .config import CacheConfig, field_type, parse_field

INSTALL_EVAL = 'dllm-cache eval needs lm-eval, which is not installed: pip install "dllm-cache[eval]"'


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps descriptions as written."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _load(model_arg: str | None, device: str, dtype: torch.dtype):
    """(model, tokenizer or None, description). Default: the shipped trained model."""
    from transformers import AutoModel, AutoTokenizer

    import dllm_cache  # noqa: F401  (registers the model classes)

    if model_arg == "tiny-random":
        from dllm_cache.models.tiny import tiny_llada

        return tiny_llada().to(device=device, dtype=dtype), None, "tiny random LLaDA"
    try:
        path = shipped.ready_model_dir(model_arg) if model_arg else shipped.default_model_dir()  # unpacks shipped weights once
    except shipped.CacheDirError as err:
        raise SystemExit(str(err)) from None
    except FileNotFoundError as err:
        raise SystemExit(f"{err} Or run with --model tiny-random.") from None
    if not (path / "config.json").exists():
        raise SystemExit(f"--model {path}: no config.json there. Pass a local model directory or 'tiny-random'.")
    model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # a model dir without tokenizer still benchmarks on token ids
        tok = None
    return model, tok, str(path)


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """One option per CacheConfig field (`--prompt-interval`, `--kv-cache-dtype`, `--no-cuda-graphs`, ...),
    with the field's default and help: built from dataclasses.fields, so a new field is an option at once.
    Values are read by the field's type here and validated by CacheConfig (cache_config_of)."""
    group = parser.add_argument_group("cache (CacheConfig fields)")
    for f in dataclasses.fields(CacheConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        kind, _ = field_type(f.name)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
            continue

        def read(value: str, name: str = f.name):
            try:
                return parse_field(name, value)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        read.__name__ = f.name
        metavar = "R:R:..." if kind is tuple else None
        group.add_argument(flag, type=read, default=f.default, help=text, metavar=metavar)


def cache_config_of(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig of parsed options; an invalid combination exits with CacheConfig's one-line message."""
    try:
        return CacheConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CacheConfig)})
    except ValueError as err:
        raise SystemExit(f"dllm-cache generate: error: {err}") from None


def _prompts(tok, args, vocab: int, special: set[int]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Left-padded prompt ids and mask, with the examples they came from (for answer checks)."""
    if tok is None:
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, vocab, (args.batch_size, 24), generator=g)
        for s in special:
            ids[ids == s] = 0
        return ids, torch.ones_like(ids), []
    if args.prompt:
        examples = [{"question": p} for p in args.prompt]
    else:
        lines = shipped.default_prompts_file().read_text().splitlines()[: args.batch_size]
        examples = [json.loads(line) for line in lines]
    texts = [shipped.arith_prompt(e["question"]) for e in examples]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"], examples


def _timed(fn, device: str) -> tuple[torch.Tensor, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def cmd_generate(args: argparse.Namespace) -> int:
    import dllm_cache
    from dllm_cache.analysis.flops import ModelDims, generation_cost
    from dllm_cache.hooks import sampler_of
    from dllm_cache.sampling.generate import generate
    from dllm_cache.sampling.trace import DecodeTrace, steps_per_block

    cache_cfg = cache_config_of(args)  # before loading the model: a bad value fails at once
    if cache_cfg.cuda_graphs and not args.device.startswith("cuda"):  # graphs replay on CUDA only: say what runs
        cache_cfg = dataclasses.replace(cache_cfg, cuda_graphs=False)
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tok, where = _load(args.model, args.device, dtype)
    cfg = model.config
    special = {i for i in (cfg.mask_token_id, cfg.pad_token_id, getattr(cfg, "eos_token_id", None)) if i is not None}
    ids, mask, examples = _prompts(tok, args, cfg.vocab_size, special)
    ids, mask = ids.to(args.device), mask.to(args.device)
    family = sampler_of(model)
    dims = ModelDims.from_config(cfg)
    kw = dict(gen_length=args.gen_length, steps=args.steps, progress=True)
    steps_note = ""
    if family in ("llada", "llada2"):  # Dream's sampler has no blocks
        kw["block_length"] = args.block_length
    if family == "llada2":  # LLaDA 2.x counts steps per block: the same total, spread over the answer's blocks
        from dllm_cache.sampling.llada2 import steps_per_block as llada2_steps

        kw["steps"] = llada2_steps(args.steps, args.gen_length, args.block_length)
        steps_note = f" ({kw['steps']} per block, as LLaDA 2.x's sampler counts them; threshold decoding may take fewer)"

    print(f"model: {where}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype}, {args.device})")
    print(f"batch {ids.shape[0]} x prompt {ids.shape[1]} tokens, gen {args.gen_length}, steps {args.steps}{steps_note}, "
          f"block {args.block_length}; cache {cache_cfg}")
    warm = dict(kw, gen_length=8, steps=8, progress=False)
    if "block_length" in warm:
        warm["block_length"] = 8
    generate(model, ids[:1], mask[:1], **warm)
    # A block-diffusion model's cost depends on the steps each block took (its sampler stops a block early once
    # it is decoded): both runs are traced and costed by what they did.
    traces = {"uncached": DecodeTrace(), "cached": DecodeTrace()} if dims.block_causal else {}

    def run(name: str) -> torch.Tensor:
        return generate(model, ids, mask, **kw, **({"trace": traces[name]} if traces else {}))

    ref, t_ref = _timed(lambda: run("uncached"), args.device)
    with dllm_cache.cache_enabled(model, cache_cfg):
        out, t_cache = _timed(lambda: run("cached"), args.device)
        stats = dllm_cache.cache_stats(model)

    P = ids.shape[1]
    per_block = {}
    if traces:
        blocks = -(-(P + args.gen_length) // args.block_length) - P // args.block_length  # the blocks it decodes
        per_block = {name: steps_per_block(t.rows(), blocks) for name, t in traces.items()}
    block_length = kw.get("block_length")
    f_ref = generation_cost(dims, ids.shape[0], P, args.gen_length, args.steps, None, block_length,
                            steps_per_block=per_block.get("uncached")).flops
    f_cache = generation_cost(dims, ids.shape[0], P, args.gen_length, args.steps, cache_cfg, block_length,
                              steps_per_block=per_block.get("cached")).flops
    agree = (out[:, P:] == ref[:, P:]).float().mean().item()
    print()
    print(f"{'':10s}{'time (s)':>10s}{'TFLOPs':>12s}")
    print(f"{'uncached':10s}{t_ref:10.2f}{f_ref / 1e12:12.4f}")
    print(f"{'cached':10s}{t_cache:10.2f}{f_cache / 1e12:12.4f}")
    print(f"speedup: {t_ref / t_cache:.2f}x wall clock, {f_ref / f_cache:.2f}x FLOPs "
          f"(response tokens recomputed on partial steps: {stats['recompute_fraction']:.0%})")
    print(f"agreement: {agree:.1%} of generated tokens identical to the uncached run")
    if args.compile:
        print("note: the cached time includes compiling the cached layer (once per layout); --compile pays on long runs")
    if tok is not None:
        n_ok = {"uncached": 0, "cached": 0}
        for i in range(ids.shape[0]):
            a = tok.decode(ref[i, P:], skip_special_tokens=True)
            b = tok.decode(out[i, P:], skip_special_tokens=True)
            gold = examples[i].get("answer") if i < len(examples) else None
            marks = {"uncached": "", "cached": ""}
            if gold is not None:
                for name, text in (("uncached", a), ("cached", b)):
                    right = shipped.is_correct(text, gold)
                    n_ok[name] += right
                    marks[name] = " [right]" if right else f" [WRONG, expected {shipped.final_number(gold)}]"
            if i < args.show:  # the mark before the text: an answer may span lines
                print(f"\n[{i}] {examples[i]['question']}\n  uncached{marks['uncached']}: {a}\n  cached{marks['cached']}: {b}")
        if examples and "answer" in examples[0]:
            print(f"\ncorrect answers: uncached {n_ok['uncached']}/{ids.shape[0]}, cached {n_ok['cached']}/{ids.shape[0]}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from dllm_cache.bench.cli import main

    return main(argv)


EVAL_EXAMPLES = """\
examples:
  dllm-cache eval --model dllm_cache --tasks arith_synth --limit 20 \\
      --model_args pretrained=SHIPPED,gen_length=32,steps=16,block_length=8,cache=on   # the shipped model
  dllm-cache eval --model dllm_cache --tasks gsm8k_local --limit 50 --data-dir DATA \\
      --model_args pretrained=PATH,dtype=bfloat16,gen_length=256,steps=256,block_length=32,cache=on,batch_size=8
  dllm-cache eval --model dllm_cache --tasks hotpotqa_local --data-dir DATA \\
      --model_args pretrained=PATH,gen_length=32,steps=32,cache=on,prompt_interval=100,response_interval=8,kv_cache_dtype=fp8
  dllm-cache eval ls tasks                   # lists our local tasks next to lm-eval's
  accelerate launch -m dllm_cache.integrations.lm_eval.launch --model dllm_cache ...   # data parallel
pretrained=SHIPPED stands for the small trained LLaDA installed with the package. GSM8K's test split
ships too; its train split (gsm8k_local's 5 shots) and HotpotQA come from --data-dir DATA (laid out as
a checkout's eval/data) or, in a source checkout, from its eval/data.
"""


def _lm_eval_installed() -> bool:
    """lm-eval can be imported (found without importing it: `--help` stays fast)."""
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a half-removed install
        return False


def eval_help() -> str:
    """Our part of `dllm-cache eval --help`: usage, examples, and the dllm_cache model arguments
    with their defaults (read from the model class and CacheConfig's fields, so it stays in step)."""
    head = (
        "usage: dllm-cache eval [--data-dir DIR] [--preset NAME] [--compare] [lm-eval arguments]\n\n"
        "Runs lm-eval's command line with `--model dllm_cache` registered and our local tasks (gsm8k_local,\n"
        "arith_synth, hotpotqa_local, ...) on the include path. Any lm-eval argument works; `run` is implied\n"
        "when no subcommand is given.\n\n"
        + EVAL_EXAMPLES
    )
    if not _lm_eval_installed():
        return head + "\n" + INSTALL_EVAL + "\n"
    from dllm_cache.integrations.lm_eval.launch import model_args_help

    return head + "\n" + model_args_help() + "\nlm-eval's own options follow (`lm-eval run --help`).\n"


def cmd_eval(argv: list[str]) -> int:
    if argv in ([], ["-h"], ["--help"]):
        print(eval_help())
        if not _lm_eval_installed():
            return 0
        argv = ["run", "--help"]
    elif not _lm_eval_installed():
        raise SystemExit(INSTALL_EVAL)
    from dllm_cache.integrations.lm_eval.launch import main as eval_main

    return eval_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dllm-cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="cached vs uncached generation on one model", formatter_class=HelpFormatter,
                       description="Cached vs uncached generation of the same prompts on one model: time, FLOPs, "
                                   "agreement, and correct answers on the shipped arithmetic problems.")
    g.add_argument("--model", default=None,
                   help="local model dir, or 'tiny-random'; None = the small trained LLaDA shipped with the package")
    g.add_argument("--prompt", action="append",
                   help="question text, repeatable, wrapped as 'Question: ...\\nAnswer:'; None = held-out arithmetic "
                        "problems shipped with the package")
    # Defaults: the shipped proxy's arithmetic setting (gen 256, block 8, as GSM8K), 4 tokens per step
    # so that a CPU runs it in about a minute.
    g.add_argument("--batch-size", type=positive_int, default=4, help="prompts generated together")
    g.add_argument("--gen-length", type=positive_int, default=256, help="generated tokens per prompt")
    g.add_argument("--steps", type=positive_int, default=64,
                   help="denoising steps over the answer (LLaDA 2.x: spread over its blocks, its sampler counting per block)")
    g.add_argument("--block-length", type=positive_int, default=8,
                   help="block length: LLaDA's semi-autoregressive blocks, LLaDA 2.x's diffusion blocks (Dream has none)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    g.add_argument("--show", type=int, default=3, help="print this many prompts with both outputs")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    add_cache_options(g)
    sub.add_parser("bench", help="speed/FLOPs benchmark (see `dllm-cache bench --help`)", add_help=False)
    sub.add_parser("eval", help="lm-eval with the dllm_cache model (see `dllm-cache eval --help`)", add_help=False)
    sub.add_parser("serve", help="OpenAI-compatible HTTP server (see `dllm-cache serve --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    if argv and argv[0] == "eval":
        return cmd_eval(argv[1:])
    if argv and argv[0] == "serve":
        from dllm_cache.serving.server import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from dllm_cache.bench.cli import device_problem

    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    try:
        return cmd_generate(args)
    except (ValueError, TypeError) as err:  # the library's input checks: their message is the whole story
        print(f"dllm-cache generate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
