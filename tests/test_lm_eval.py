"""lm-eval integration: the `dllm_cache` model class, the local task YAMLs and the launcher.

A tiny random LLaDA (and Dream) with a byte-level tokenizer is saved to a temp dir and run
end to end through lm-eval. A random model scores ~0: these tests check the plumbing
(arguments, batching, decoding, stop strings, metrics, sample counts), not quality.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("lm_eval")
tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dllm_cache.integrations.lm_eval import launch as lm_eval_launch  # noqa: E402
from dllm_cache.integrations.lm_eval.model import DLLMCacheLM, cut_at_stop_strings, parse_bool, parse_dtype, parse_int  # noqa: E402
from tests.helpers import byte_tokenizer  # noqa: E402

TASKS_DIR = REPO / "dllm_cache" / "integrations" / "lm_eval" / "tasks"
VOCAB = 260


def _save_tiny(path: Path, family: str) -> Path:
    from dllm_cache.models.tiny import tiny_dream, tiny_llada

    tokenizer = byte_tokenizer()
    ids = dict(
        vocab_size=VOCAB,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert ids["mask_token_id"] == 256 and len(tokenizer) <= VOCAB
    if family == "llada":
        model = tiny_llada(seed=0, embedding_size=VOCAB, **ids)
    else:
        model = tiny_dream(seed=0, bos_token_id=tokenizer.eos_token_id, **ids)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny_llada"), "llada")


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny_dream"), "dream")


def _evaluate(model_args: str, task: str, limit: int):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="dllm_cache",
        model_args=model_args,
        tasks=[task],
        limit=limit,
        # only our folder: indexing lm-eval's thousands of built-in YAMLs takes ~8 s
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("cache", ["off", "on"])
def test_gsm8k_local_end_to_end(llada_dir, cache, tmp_path, capsys):
    stats_file = tmp_path / "stats.jsonl"
    args = (
        f"pretrained={llada_dir},dtype=float32,device=cpu,batch_size=2,gen_length=8,steps=8,block_length=4,max_length=136,"
        f"cache={cache},prompt_interval=4,response_interval=2,transfer_ratio=0.5,stats_file={stats_file}"
    )
    out = _evaluate(args, "gsm8k_local", limit=3)
    res = out["results"]["gsm8k_local"]
    assert 0.0 <= res["exact_match,strict-match"] <= 1.0
    assert out["n-samples"]["gsm8k_local"]["effective"] == 3
    samples = out["samples"]["gsm8k_local"]
    assert len(samples) == 6  # one per document and filter
    assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract"}
    for s in samples:
        (resp,) = s["resps"][0]
        assert isinstance(resp, str)
        assert "Question:" not in resp  # lm-eval's gsm8k stop strings applied
        context = s["arguments"][0][0]
        assert context.startswith("Question: ") and context.endswith("\nAnswer:")
        assert context.count("Question: ") == 6  # lm-eval's gsm8k: 5 shots from the train split + the test question
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res)
    # the one-line summary and the stats record
    printed = capsys.readouterr().out
    assert "[dllm_cache rank 0] 3 requests, 2 batches" in printed
    (record,) = [json.loads(line) for line in stats_file.read_text().splitlines()]
    assert record["requests"] == 3 and record["cache"] == (cache == "on")
    if cache == "on":
        cs = record["cache_stats"]
        assert cs["steps"] == 2 * 8  # two batches of 8 denoising steps
        assert cs["full_steps"] >= 2 and cs["partial_steps"] > 0
        assert 0 < record["recompute_fraction"] <= 1
    else:
        assert "cache_stats" not in record


def test_hotpotqa_synth_end_to_end(llada_dir, tmp_path, monkeypatch):
    data = tmp_path / "hotpot.jsonl"
    rows = [
        {"context": "Passage 1: Paris is in France.", "question": "Where is Paris?", "answer": "France"},
        {"context": "Passage 1: Ada wrote notes.", "question": "Who wrote notes?", "answer": ["Ada", "Ada Lovelace"]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("DLLM_CACHE_HOTPOTQA_SYNTH_FILE", str(data))
    out = _evaluate(f"pretrained={llada_dir},device=cpu,gen_length=8,steps=4,cache=on", "hotpotqa_synth", limit=2)
    res = out["results"]["hotpotqa_synth"]
    assert {"exact_match,none", "f1,none"} <= set(res)
    assert out["n-samples"]["hotpotqa_synth"]["effective"] == 2
    prompt = out["samples"]["hotpotqa_synth"][0]["arguments"][0][0]
    assert prompt.startswith("Answer the question based on the given passages. Only give me the answer")
    assert "\n\nPassage 1:" in prompt and prompt.endswith("\nAnswer:")


def test_generate_until_order_stops_and_dream(dream_dir):
    lm = DLLMCacheLM(pretrained=str(dream_dir), device="cpu", batch_size="2", gen_length="6", steps="6", cache="on")
    assert lm.family == "dream" and lm.mask_id == 256 and lm.pad_id == 258
    reqs = [
        SimpleNamespace(args=("a", {"until": ["\n"]})),
        SimpleNamespace(args=("a much longer prompt than the others", {"until": []})),
        SimpleNamespace(args=("mid prompt", {"until": "zzz"})),
        SimpleNamespace(args=("", {})),
    ]
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert len(out) == 4 and all(isinstance(o, str) for o in out)
    assert "\n" not in out[0].lstrip()
    # order is preserved: the same request alone gives the same greedy text as in the batch
    alone = lm.generate_until([reqs[1]], disable_tqdm=True)
    assert alone[0] == out[1]


def test_loglikelihood_monte_carlo(llada_dir):
    lm = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", mc_num=8, mc_batch_size=4, cache="on")
    reqs = [SimpleNamespace(args=("Question: 1+1?\nAnswer:", " 2")), SimpleNamespace(args=("ctx ", "abc"))]
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    assert len(out) == 2
    for ll, greedy in out:
        assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)
    # deterministic per request, and the cache is back on afterwards
    assert lm.loglikelihood(reqs[:1], disable_tqdm=True)[0] == out[0]
    import dllm_cache

    assert dllm_cache.is_cache_enabled(lm.model)
    # continuation of one token: every draw masks it, so the estimate is exactly its CE (t = 1)
    import torch

    prefix, target = lm._encode_pair("abc", "d")
    x = torch.tensor([prefix + [lm.mask_id]])
    dllm_cache.disable_cache(lm.model)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(x).logits[0, -1].float(), -1)[target[0]]
    dllm_cache.enable_cache(lm.model, lm.cache_config)
    ll1, _ = lm.loglikelihood([SimpleNamespace(args=("abc", "d"))], disable_tqdm=True)[0]
    assert ll1 == pytest.approx(float(logp), abs=1e-5)
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling(reqs)


def test_bad_model_args(llada_dir, tmp_path):
    with pytest.raises(ValueError, match="not a local directory"):
        DLLMCacheLM(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cache=.maybe. is not a boolean"):
        DLLMCacheLM(pretrained=str(llada_dir), cache="maybe")
    with pytest.raises(ValueError, match="dtype"):
        DLLMCacheLM(pretrained=str(llada_dir), dtype="int3")


# ----------------------------------------------------------------------------- argument parsing
def test_model_arg_parsing_and_stop_strings():
    assert parse_bool("on", "cache") and parse_bool(True, "c") and parse_bool(1, "c") and parse_bool("Yes", "c")
    assert not parse_bool("off", "c") and not parse_bool(False, "c") and not parse_bool("0", "c")
    assert parse_int("8", "steps") == 8 and parse_int(8.0, "steps") == 8
    assert parse_int("none", "x", optional=True) is None
    with pytest.raises(ValueError, match="not an integer"):
        parse_int("8.5", "steps")
    with pytest.raises(ValueError, match=">= 1"):
        parse_int(0, "steps", minimum=1)
    assert parse_dtype("bf16") is parse_dtype("bfloat16") and parse_dtype("auto") == "auto"
    assert cut_at_stop_strings("12\n\nQuestion: x", ["Question:", "\n\n"]) == "12"
    assert cut_at_stop_strings("\n\n  Paris\n\nmore", ["\n\n"]) == "\n\n  Paris"  # leading blank kept
    assert cut_at_stop_strings("abc", []) == "abc"


# ----------------------------------------------------------------------------- launcher
def test_launcher_adds_include_path():
    tasks = str(TASKS_DIR)
    added = ["run", "--model", "dllm_cache", "--include_path", tasks]
    assert lm_eval_launch.with_task_dir(["--model", "dllm_cache"]) == added
    assert lm_eval_launch.with_task_dir(["ls", "tasks"]) == ["ls", "tasks", "--include_path", tasks]
    assert lm_eval_launch.with_task_dir(["run", "--include_path", "/x"]) == ["run", "--include_path", "/x"]
    assert lm_eval_launch.with_task_dir(["--include_path=/x", "--tasks", "t"]) == ["--include_path=/x", "--tasks", "t"]
    assert lm_eval_launch.with_task_dir(["--help"]) == ["--help"]


def test_launcher_data_dir_and_default_model(tmp_path):
    """--data-dir is ours (taken out of lm-eval's argv, checked to be a folder); a run without --model runs ours."""
    assert lm_eval_launch.pop_data_dir(["--tasks", "t", "--data-dir", str(tmp_path)]) == (["--tasks", "t"], str(tmp_path))
    assert lm_eval_launch.pop_data_dir([f"--data-dir={tmp_path}"]) == ([], str(tmp_path))
    assert lm_eval_launch.pop_data_dir(["--tasks", "t"]) == (["--tasks", "t"], None)
    with pytest.raises(ValueError, match="no such folder"):
        lm_eval_launch.pop_data_dir(["--data-dir", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="needs a folder"):
        lm_eval_launch.pop_data_dir(["--data-dir"])
    assert lm_eval_launch.with_default_model(["run", "--tasks", "t"]) == ["run", "--tasks", "t", "--model", "dllm_cache"]
    assert lm_eval_launch.with_default_model(["run", "--model", "hf"]) == ["run", "--model", "hf"]
    assert lm_eval_launch.with_default_model(["ls", "tasks"]) == ["ls", "tasks"]
    assert lm_eval_launch.with_default_model(["run", "--help"]) == ["run", "--help"]


def test_launcher_runs_cli(llada_dir, tmp_path, capsys, only_local_tasks):
    out_dir = tmp_path / "out"
    code = lm_eval_launch.main(
        [
            "--model", "dllm_cache", "--tasks", "gsm8k_local", "--limit", "2",
            "--model_args", f"pretrained={llada_dir},device=cpu,gen_length=4,steps=4,cache=on",
            "--output_path", str(out_dir),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "gsm8k_local" in printed and "exact_match" in printed
    assert list(out_dir.rglob("results_*.json")), "lm-eval wrote no results file"
