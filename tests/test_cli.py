"""The command line as a new user meets it: help with defaults, bench repeats into a documented
folder, `generate` from the shipped files, and a library that never imports eval/."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from dllm_cache import cli, shipped
from dllm_cache.bench import build_parser as bench_parser
from dllm_cache.bench import main as bench_main


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _generate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


@pytest.mark.parametrize("parser", [_generate_parser, bench_parser], ids=["generate", "bench"])
def test_every_option_has_help_and_shows_its_default(parser):
    p = parser()
    text = " ".join(p.format_help().split())
    for action in _options(p):
        assert action.help, f"{action.option_strings} has no help"
    assert text.count("(default:") == len(_options(p))


def test_eval_help_lists_model_args_and_examples(capsys):
    pytest.importorskip("lm_eval")
    from eval.lm_eval_model import DLLMCacheLM

    text = cli.eval_help()
    assert "examples:" in text and "dllm-cache eval --model dllm_cache --tasks gsm8k_local" in text
    for name in ("cache", "prompt_interval", "response_interval", "transfer_ratio", "gen_length", "steps",
                 "block_length", "threshold", "alg", "remasking"):
        assert name in text
    import inspect

    for name, param in list(inspect.signature(DLLMCacheLM.__init__).parameters.items())[1:]:
        default = "(required)" if param.default is inspect.Parameter.empty else str(param.default)
        assert f"{name}={default}" in text


def test_eval_without_a_checkout_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "CHECKOUT", tmp_path)
    assert "needs a source checkout" in cli.eval_help()
    with pytest.raises(SystemExit, match="needs a source checkout"):
        cli.main(["eval", "--tasks", "gsm8k_local"])


def test_bench_repeats_by_default_into_dllm_cache_results(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    args = ["--shape", "tiny-llada", "--prompt-len", "8", "--gen-len", "4", "--steps", "4", "--block-length", "4",
            "--warmup-steps", "1", "--no-progress", "--tag", "t"]
    assert bench_main(args) == 0
    report = json.loads((tmp_path / "dllm_cache_results" / "t.json").read_text())
    assert report["meta"]["repeats"] == 3
    for row in report["results"]:
        assert len(row["latencies_s"]) == 3
        assert row["latency_s"] == sorted(row["latencies_s"])[1]  # the median
    assert "| latency s (median) | spread |" in capsys.readouterr().out
    assert "dllm_cache_results" in " ".join(bench_parser().format_help().split())


def test_shipped_helpers_match_the_training_task():
    """dllm_cache.shipped copies the arith task's prompt and answer check (the library may not
    import eval/): they must agree with eval/tiny/tasks.py."""
    from eval.tiny import tasks

    examples = [json.loads(line) for line in shipped.default_prompts_file().read_text().splitlines()[:20]]
    assert examples and all("question" in e and "####" in e["answer"] for e in examples)
    for e in examples:
        assert shipped.arith_prompt(e["question"]) == tasks.arith_prompt(e["question"])
    for text, gold in [(" 3 + 4 = 7.\n#### 7", "#### 7"), ("#### 007", "#### 7"), ("no number", "#### 1"),
                       ("1 + 1 = 2", "#### 2"), ("#### -3", "#### -3"), ("#### 5", "#### 6")]:
        assert shipped.is_correct(text, gold) == tasks.is_correct("arith", text, gold)


def test_shipped_model_folder():
    assert (shipped.default_model_dir() / "config.json").exists()
    assert list(shipped.default_model_dir().glob("*.safetensors"))


def test_missing_shipped_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "_PACKAGE", tmp_path / "pkg")
    monkeypatch.setattr(shipped, "_CHECKOUT", tmp_path)
    with pytest.raises(SystemExit, match="shipped model is missing.*tiny-random"):
        cli.main(["generate", "--device", "cpu"])


def test_library_imports_nothing_from_eval():
    check = (
        "import sys, dllm_cache, dllm_cache.cli, dllm_cache.bench, dllm_cache.generate, dllm_cache.shipped; "
        "sys.exit(sorted(m for m in sys.modules if m == 'eval' or m.startswith('eval.')) or 0)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_generate_main_job_small(capsys):
    torch.set_num_threads(1)
    assert cli.main(["generate", "--batch-size", "2", "--gen-length", "8", "--steps", "4", "--block-length", "8",
                     "--device", "cpu", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert str(shipped.default_model_dir()) in out
    assert "speedup:" in out and "correct answers: uncached" in out


def test_generate_rejects_nonpositive_sizes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--steps", "0"])
    assert "must be an integer >= 1" in capsys.readouterr().err
