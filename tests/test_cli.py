"""The command line as a new user meets it: help with defaults, bench repeats into a documented
folder, `generate` from the shipped files, every CacheConfig field as an option, `dllm-cache eval`
without lm-eval, and a library that never imports eval/ (nor lm-eval)."""

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dllm_cache import cli, shipped
from dllm_cache.bench.cli import build_parser as bench_parser
from dllm_cache.bench.cli import main as bench_main
from dllm_cache.config import CacheConfig


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
    from dllm_cache.integrations.lm_eval.model import DLLMCacheLM

    text = cli.eval_help()
    assert "examples:" in text and "dllm-cache eval --model dllm_cache --tasks gsm8k_local" in text
    for name in ("cache", "prompt_interval", "response_interval", "transfer_ratio", "gen_length", "steps",
                 "block_length", "threshold", "alg", "remasking"):
        assert name in text
    import inspect

    for name, param in list(inspect.signature(DLLMCacheLM.__init__).parameters.items())[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:  # **cache_fields: listed field by field below
            continue
        default = "(required)" if param.default is inspect.Parameter.empty else str(param.default)
        assert f"{name}={default}" in text
    flat = " ".join(text.split())
    for f in dataclasses.fields(CacheConfig):  # every field with its default and its own help
        assert f"{f.name}={f.default}" in text and f.metadata["help"] in flat, f.name


# A child interpreter in which `import lm_eval` fails, as on a machine without the [eval] extra:
# `dllm-cache eval --help` (prints, returns 0), then `dllm-cache eval --tasks ...` (exits with its message).
_NO_LM_EVAL = textwrap.dedent("""
    import sys

    class NoLmEval:
        def find_spec(self, name, path=None, target=None):
            if name == "lm_eval" or name.startswith("lm_eval."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoLmEval())
    import dllm_cache, dllm_cache.integrations.lm_eval  # both import without lm-eval
    from dllm_cache import cli
    assert cli.main(["eval", "--help"]) == 0
    cli.main(["eval", "--tasks", "gsm8k_local"])
""")


def test_eval_without_lm_eval_says_how_to_install():
    done = subprocess.run([sys.executable, "-c", _NO_LM_EVAL], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert 'pip install "dllm-cache[eval]"' in cli.INSTALL_EVAL
    assert cli.INSTALL_EVAL in done.stdout and "examples:" in done.stdout  # --help
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [cli.INSTALL_EVAL]  # a run: one line


# CacheConfig field -> (its value as typed, other fields it needs, the value CacheConfig then holds). Every field
# must be here (the tests below are parametrized over dataclasses.fields, so a new field fails until it is added).
CACHE_FIELD_VALUES = {
    "prompt_interval": ("7", {}, 7),
    "response_interval": ("5", {}, 5),
    "transfer_ratio": ("0.5", {}, 0.5),
    "cfg_interval": ("3", {}, 3),
    "cuda_graphs": ("off", {}, False),
    "compile": ("on", {}, True),
    "selection": ("paper", {}, "paper"),
    "frontier_window": ("4", {}, 4),
    "frontier_only": ("on", {}, True),
    "shifted_row": ("response", {}, "response"),
    "policy": ("block-dual", {}, "block-dual"),
    "block_refresh": ("2", {"policy": "block-dual"}, 2),
    "block_start": ("incremental", {"policy": "block-dual"}, "incremental"),
    "response_drift_threshold": ("0.1", {}, 0.1),
    "response_min_interval": ("2", {"response_drift_threshold": "0.1"}, 2),
    "layer_ratios": ("0.5:0.25:0.75", {}, (0.5, 0.25, 0.75)),  # one per layer of the tiny models (3)
    "kv_cache_dtype": ("fp8", {}, "fp8"),
    "response_clock": ("tokens", {}, "tokens"),
}
CACHE_FIELDS = [f.name for f in dataclasses.fields(CacheConfig)]


def _cli_words(name: str, text: str) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if text in ("on", "off"):  # booleans are --flag / --no-flag
        return [flag if text == "on" else "--no-" + flag[2:]]
    return [flag, text]


@pytest.mark.parametrize("name", CACHE_FIELDS)
def test_every_cache_field_is_a_generate_option(name):
    """The option is in `generate --help` with the field's help and default, and its value reaches the CacheConfig."""
    text, companions, expected = CACHE_FIELD_VALUES[name]
    parser = _generate_parser()
    field = next(f for f in dataclasses.fields(CacheConfig) if f.name == name)
    help_text = " ".join(parser.format_help().split())
    assert "--" + name.replace("_", "-") in help_text and field.metadata["help"] in help_text
    assert cli.cache_config_of(parser.parse_args([])) == CacheConfig()  # defaults are the field defaults
    words = [w for key, value in companions.items() for w in _cli_words(key, value)] + _cli_words(name, text)
    cfg = cli.cache_config_of(parser.parse_args(words))
    assert getattr(cfg, name) == expected and getattr(cfg, name) != field.default


@pytest.mark.parametrize("argv, message", [
    (["--transfer-ratio", "1.5"], "CacheConfig.transfer_ratio must be a number in [0, 1]"),
    (["--block-refresh", "2"], "applies to the block policies only"),
    (["--kv-cache-dtype", "int4"], "kv_cache_dtype must be one of"),
])
def test_bad_cache_values_are_one_line_errors(argv, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", "--device", "cpu", *argv])
    assert message in str(stop.value) and "\n" not in str(stop.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("command", [["generate"], ["bench", "--shape", "tiny-llada", "--workload", "gsm8k"]])
def test_a_device_that_is_not_here_is_a_one_line_error(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*command, "--device", "cuda"])
    said = capsys.readouterr().err.strip().splitlines()[-1:] + [str(stop.value)]
    assert any("--device cuda: no CUDA device here" in line for line in said), said
    with pytest.raises(SystemExit):
        cli.main([*command, "--device", "bogus"])
    assert "Traceback" not in capsys.readouterr().err


def test_sampler_checks_are_one_line_errors(capsys):
    """A bad combination the sampler refuses (gen_length not a multiple of block_length) exits 2 with its message."""
    torch.set_num_threads(1)
    rc = cli.main(["generate", "--device", "cpu", "--batch-size", "1", "--gen-length", "16", "--steps", "8",
                   "--block-length", "5", "--show", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "dllm-cache generate: error: gen_length (16) must be a multiple of block_length (5)." in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit, match="dllm-cache bench: error: gen_len 10 must be a multiple of block_length 4"):
        cli.main(["bench", "--shape", "tiny-llada", "--prompt-len", "8", "--gen-len", "10", "--steps", "10",
                  "--block-length", "4", "--dry-run"])


def test_unreadable_cache_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--layer-ratios", "a:b"])
    assert "CacheConfig.layer_ratios='a:b': expected numbers separated by ':'" in capsys.readouterr().err


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


def test_shipped_model_folder():
    assert (shipped.default_model_dir() / "config.json").exists()
    assert list(shipped.default_model_dir().glob("*.safetensors"))


def test_missing_shipped_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "_PACKAGE", tmp_path / "pkg")
    monkeypatch.setattr(shipped, "_CHECKOUT", tmp_path)
    with pytest.raises(SystemExit, match="shipped model is missing.*tiny-random"):
        cli.main(["generate", "--device", "cpu"])


def test_library_imports_nothing_from_eval():
    """Nor lm-eval: importing dllm_cache (its lm-eval integration package included) loads neither."""
    check = (
        "import sys, dllm_cache, dllm_cache.cli, dllm_cache.bench.cli, dllm_cache.sampling.generate, dllm_cache.shipped, "
        "dllm_cache.integrations.lm_eval; "
        "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in ('eval', 'lm_eval')) or 0)"
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
    assert "cuda_graphs=False" in out  # what runs on CPU, not the config's default (graphs replay on CUDA only)
    marked = [line for line in out.splitlines() if line.lstrip().startswith(("uncached [", "cached ["))]
    assert len(marked) == 2 and all(" [right]: " in line or " [WRONG, expected " in line for line in marked), out


def test_generate_rejects_nonpositive_sizes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--steps", "0"])
    assert "must be an integer >= 1" in capsys.readouterr().err
