"""Odd but ordinary uses (issues 12 and 24): each case must raise a clear error or give the correct result.
pytest runs every case (CPU, tiny models, ~20 s); run as a module it prints each case's error or result:

    python -m pytest tests/test_odd_inputs.py
    python -m tests.test_odd_inputs             # the printed report, from the checkout
    python -m tests.test_odd_inputs --shipped   # also right vs left padding on the shipped model (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import io
import pickle
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import dllm_cache
from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from tests.helpers import padded_prompts as prompts
from tests.helpers import right_padded

CASES: list[tuple[str, Callable[[], str]]] = []
OPTIONS = argparse.Namespace(shipped=False)


def case(name: str):
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        CASES.append((name, fn))
        return fn

    return register


def error_of(fn: Callable[[], object], kind: type[BaseException] = ValueError, match: str = "") -> str:
    """The message of the clear error `fn` must raise."""
    try:
        fn()
    except kind as err:
        text = str(err)
        assert re.search(match, text), f"error does not say {match!r}: {text}"
        return f"{type(err).__name__}: {text}"
    raise AssertionError(f"no {kind.__name__} raised")


# ----------------------------------------------------------------------------- 1. padding
@case("1. right-padded prompts give the left-padded result (LLaDA and Dream, cached and not)")
def _right_padding() -> str:
    for factory in (tiny_llada, tiny_dream):
        model = factory()
        ids, mask = prompts(model)
        rids, rmask = right_padded(ids, mask)
        for cfg in (None, CacheConfig()):
            if cfg is not None:
                enable_cache(model, cfg)
            left = generate(model, ids, mask, gen_length=8, steps=8)
            right = generate(model, rids, rmask, gen_length=8, steps=8)
            disable_cache(model)
            assert torch.equal(right[:, :10], rids), "the prompt must come back as given"
            assert torch.equal(right[:, 10:], left[:, 10:]), "right padding changed the answer"
    return "generated tokens identical; the prompt comes back padded as given"


@case("1. a mask that is neither left- nor right-padded")
def _holes() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    mask[0, 4] = 0
    return error_of(lambda: generate(model, ids, mask, gen_length=8, steps=8), match="neither left- nor right-padded")


# ----------------------------------------------------------------------------- 2. copies
@case("2. deepcopy / pickle of a cached model, then disable / enable / cache_enabled on the copy")
def _copies() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    ref = generate(model, ids, mask, gen_length=8, steps=8)
    enable_cache(model, CacheConfig(1, 1, 0.25))
    generate(model, ids, mask, gen_length=8, steps=8)
    for copy_of in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        twin = copy_of(model)
        assert torch.equal(generate(twin, ids, mask, gen_length=8, steps=8), ref)  # cached, exact config
        disable_cache(twin)
        assert not any("forward" in m.__dict__ for m in twin.modules()), "disable left patched forwards"
        assert torch.equal(generate(twin, ids, mask, gen_length=8, steps=8), ref)
        with cache_enabled(twin, CacheConfig(1, 1, 1.0)):
            generate(twin, ids, mask, gen_length=8, steps=8)
        enable_cache(twin)
        disable_cache(twin)
    return "copies generate, disable, re-enable exactly like the original"


# ----------------------------------------------------------------------------- 3. options
@case("3. misspelled option gen_lenght=8")
def _typo() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    return error_of(lambda: generate(model, ids, mask, gen_lenght=8), match="Did you mean 'gen_length'")


@case("3. top_p on LLaDA")
def _top_p() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    return error_of(lambda: generate(model, ids, mask, gen_length=8, steps=8, top_p=0.9), match="dream sampler")


@case("3. cfg_scale on Dream is refused; block_length and threshold are Dream options too")
def _dream_options() -> str:
    model = tiny_dream()
    ids, mask = prompts(model)
    message = error_of(lambda: generate(model, ids, mask, gen_length=8, steps=8, cfg_scale=1.0), match="llada sampler")
    for kw in ({"block_length": 4}, {"threshold": 0.9}):  # semi-AR blocks and parallel decoding (Fast-dLLM's Dream)
        out = generate(model, ids, mask, gen_length=8, steps=8, **kw)
        assert not (out[:, ids.shape[1] :] == model.config.mask_token_id).any(), kw
    return message


@case("3. lm-eval model args alg=bogus on LLaDA, and an unknown argument")
def _lm_eval_args() -> str:
    try:
        from dllm_cache.integrations.lm_eval.model import DLLMCacheLM
    except ImportError as err:
        return f"skipped: lm-eval glue not importable here ({err})"
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        from tests.test_lm_eval import _save_tiny

        path = _save_tiny(Path(tmp), "llada")
        first = error_of(lambda: DLLMCacheLM(pretrained=str(path), device="cpu", alg="bogus"), match="dream sampler")
        error_of(lambda: DLLMCacheLM.create_from_arg_string(f"pretrained={path},gen_lenght=8"), match="unknown")
    return first


# ----------------------------------------------------------------------------- 4. own loop
def _own_loop(model, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """A hand-written greedy loop: unmask the most confident masked token of each row per step."""
    mask_id = model.config.mask_token_id
    x = x.clone()
    logits_seen = []
    for _ in range(steps):
        logits = model(x).logits
        logits_seen.append(logits.detach().clone())
        conf, tok = logits.softmax(-1).max(-1)
        conf = conf.masked_fill(x != mask_id, -1.0)
        pos = conf.argmax(dim=1)
        rows = torch.arange(x.shape[0])
        x[rows, pos] = tok[rows, pos]
    return logits_seen


@case("4. own step loop, same prompt twice without reset_cache")
def _own_loop_twice() -> str:
    model = tiny_llada()
    ids, _ = prompts(model, batch=1)
    x = torch.cat([ids, torch.full((1, 8), model.config.mask_token_id)], dim=1)
    with cache_enabled(model):
        first = _own_loop(model, x, 8)
        second = _own_loop(model, x, 8)
        stats = cache_stats(model, reset=True)
        after = cache_stats(model)
    diff = max((a - b).abs().max().item() for a, b in zip(first, second))
    assert diff == 0.0, f"second run reused stale features (logit difference {diff:.3g})"
    assert stats["generations"] == 2 and after["steps"] == 0
    return f"new generation detected (2 generations, logit difference {diff}); cache_stats(reset=True) zeroes counters"


# ----------------------------------------------------------------------------- 5. clear errors
def _bad_generate(dream: bool = False, kind: type[BaseException] = ValueError, **overrides) -> Callable[[], str]:
    def run() -> str:
        model = (tiny_dream if dream else tiny_llada)()
        ids, mask = prompts(model)
        kwargs = {**dict(input_ids=ids, attention_mask=mask, gen_length=8, steps=8), **overrides}
        return error_of(lambda: generate(model, **kwargs), kind)

    return run


for _name, _kw in [
    ("gen_length=0", dict(gen_length=0)),
    ("gen_length=-4", dict(gen_length=-4)),
    ("steps=0 (LLaDA)", dict(steps=0)),
    ("steps=0 (Dream, used to return all masks)", dict(steps=0, dream=True)),
    ("1-D input_ids", dict(input_ids=torch.arange(5), attention_mask=None)),
    ("empty batch", dict(input_ids=torch.zeros(0, 5, dtype=torch.long), attention_mask=None)),
    ("attention_mask of the wrong width", dict(attention_mask=torch.ones(3, 7, dtype=torch.long))),
    ("threshold=-0.1", dict(threshold=-0.1)),
    ("threshold=1.5", dict(threshold=1.5)),
    ("cfg_scale=-1", dict(cfg_scale=-1.0)),
    ("prompt + gen_length beyond max_sequence_length", dict(gen_length=1000, steps=1000)),
    ("float input_ids", dict(input_ids=torch.rand(3, 10), attention_mask=None, kind=TypeError)),
]:
    case(f"5. {_name}")(_bad_generate(**_kw))


@case("5. a prompt row of padding alone")
def _empty_row() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    mask[1] = 0
    return error_of(lambda: generate(model, ids, mask, gen_length=8, steps=8), match=r"row\(s\) \[1\] mark no real token")


@case("5. the mask token inside a prompt (padding positions may hold anything)")
def _mask_in_prompt() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    mask_id = model.config.mask_token_id
    padded = ids.clone()
    padded[2, 0] = mask_id  # row 2 is left padded: a pad position, not read
    assert generate(model, padded, mask, gen_length=8, steps=8).shape == (3, 18)
    ids[1, 5] = mask_id
    return error_of(lambda: generate(model, ids, mask, gen_length=8, steps=8), match=r"row\(s\) \[1\] holds the mask token")


@case("5. NaN or inf in inputs_embeds")
def _nan_embeds() -> str:
    model = tiny_llada()
    ids, mask = prompts(model)
    embeds = model.get_input_embeddings()(ids).detach()
    embeds[0, 0, 3] = float("nan")  # a padding position: still refused, it would poison the attention sums
    return error_of(lambda: generate(model, inputs_embeds=embeds, attention_mask=mask, gen_length=8, steps=8), match="NaN or inf")


@case("5. steps > gen_length: a warning, and the result of steps = gen_length")
def _too_many_steps() -> str:
    for factory in (tiny_llada, tiny_dream):
        model = factory()
        ids, mask = prompts(model)
        calls: list[int] = []
        handle = model.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        with pytest.warns(UserWarning, match=r"steps \(64\) > gen_length \(16\)"):
            out = generate(model, ids, mask, gen_length=16, steps=64)
        handle.remove()
        assert len(calls) == 16, f"{len(calls)} forwards for 16 tokens"
        assert torch.equal(out, generate(model, ids, mask, gen_length=16, steps=16))
    return "warned; 16 forwards instead of 64, the tokens of steps=16"


@case("5. numpy integers in CacheConfig")
def _numpy_config() -> str:
    cfg = CacheConfig(np.int64(50), np.int32(4), np.float32(0.5))
    assert type(cfg.prompt_interval) is int and cfg.response_interval == 4
    return f"accepted: {cfg}"


@case("5. backward through a cached forward")
def _backward() -> str:
    model = tiny_llada()
    ids, _ = prompts(model, batch=1)
    with cache_enabled(model):
        logits = model(ids).logits
        return error_of(lambda: logits.sum().backward(), RuntimeError, "inference-only")


@case("5. `with cache_enabled(...)` on an already cached model restores its config")
def _nested() -> str:
    model = tiny_llada()
    mine = CacheConfig(50, 4, 0.5)
    enable_cache(model, mine)
    with cache_enabled(model, CacheConfig(1, 1, 1.0)):
        pass
    assert dllm_cache.is_cache_enabled(model)
    restored = model.__dict__["_dllm_cache_state"].state.config
    assert restored == mine, restored
    return f"restored {restored}"


# ----------------------------------------------------------------------------- 6-7. CLI, packaging
@case("6. CLI help shows defaults; eval --help lists the dllm_cache model args")
def _cli_help() -> str:
    from dllm_cache.bench.cli import build_parser
    from dllm_cache.cli import build_parser as cli_parser
    from dllm_cache.cli import eval_help

    gen_help = cli_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    bench_help = build_parser().format_help()
    assert "(default: 64)" in gen_help and "(default: 3)" in bench_help and "dllm_cache_results" in bench_help
    text = eval_help()
    assert "examples:" in text
    if "needs a source checkout" not in text:
        assert all(k in text for k in ("cache", "prompt_interval", "response_interval", "transfer_ratio", "gen_length"))
    return "generate/bench help show defaults; bench repeats 3x into ./dllm_cache_results; eval help lists model args"


@case("7. the library finds the shipped model and prompts without eval/ on the import path")
def _shipped() -> str:
    from dllm_cache import shipped

    model_dir, prompts_file = shipped.default_model_dir(), shipped.default_prompts_file()
    assert (model_dir / "config.json").exists() and prompts_file.exists()
    check = (
        "import sys, dllm_cache.cli, dllm_cache.bench, dllm_cache.sampling.generate, dllm_cache.shipped; "
        "sys.exit(any(m == 'eval' or m.startswith('eval.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0, "the library imported eval/"
    return f"model {model_dir}, prompts {prompts_file}; importing the library loads nothing from eval/"


@case("1. (shipped model) right- vs left-padded answers to 8 held-out problems")
def _shipped_padding() -> str:
    if not OPTIONS.shipped:
        return "skipped (pass --shipped; ~1 min on CPU)"
    import json

    from transformers import AutoModel, AutoTokenizer

    from dllm_cache import shipped

    model = AutoModel.from_pretrained(shipped.default_model_dir(), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(shipped.default_model_dir())
    examples = [json.loads(line) for line in shipped.default_prompts_file().read_text().splitlines()[:8]]
    texts = [shipped.arith_prompt(e["question"]) for e in examples]
    scores = {}
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = generate(model, enc["input_ids"], enc["attention_mask"], gen_length=64, steps=64, block_length=32)
        answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        scores[side] = sum(shipped.is_correct(a, e["answer"]) for a, e in zip(answers, examples))
    assert scores["left"] == scores["right"], scores
    return f"correct: left-padded {scores['left']}/8, right-padded {scores['right']}/8"


@pytest.mark.parametrize("name, fn", CASES, ids=[name.split(" ", 1)[1][:60] for name, _ in CASES])
def test_odd_input(name: str, fn: Callable[[], str]) -> None:
    torch.manual_seed(0)
    with redirect_stdout(io.StringIO()):
        result = fn()
    if result.startswith("skipped"):
        pytest.skip(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shipped", action="store_true", help="also compare padding sides on the shipped model")
    OPTIONS.shipped = parser.parse_args(argv).shipped
    torch.manual_seed(0)
    wrong = skipped = 0
    for name, fn in CASES:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                result = fn()
            skipped += result.startswith("skipped")
            print(f"{'[skip]' if result.startswith('skipped') else '[ok]':7s} {name}\n        {result}")
        except Exception as err:  # noqa: BLE001 - a probe reports every case
            wrong += 1
            print(f"[WRONG] {name}\n        {type(err).__name__}: {err}")
    run = len(CASES) - skipped
    print(f"\n{run - wrong}/{run} cases give a clear error or the correct result ({skipped} skipped)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
