"""Presets (dllm_cache/integrations/lm_eval/presets.py): the published per-task settings, through --model_args and --preset."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("lm_eval")

from dllm_cache.config import CacheConfig  # noqa: E402
from dllm_cache.integrations.lm_eval import launch as lm_eval_launch  # noqa: E402
from dllm_cache.integrations.lm_eval.model import DLLMCacheLM, model_arg_names  # noqa: E402
from dllm_cache.integrations.lm_eval.presets import PRESETS, UNPUBLISHED, apply_preset, get_preset, markdown_table  # noqa: E402
from tests import test_lm_eval  # noqa: E402  (skips this module too when tokenizers is missing)

# tiny random checkpoints with a byte-level tokenizer (module-scoped fixtures of test_lm_eval)
llada_dir, dream_dir = test_lm_eval.llada_dir, test_lm_eval.dream_dir

TASKS = ("gsm8k", "math", "humaneval", "mbpp", "gpqa", "bbh", "mmlu-pro", "hotpotqa")
MODELS = ("llada-base", "llada-instruct", "dream-base", "dream-instruct")


def test_every_model_task_pair_is_a_preset_or_says_why_not():
    for model in MODELS:
        for task in TASKS:
            name = f"{model}-{task}"
            assert (name in PRESETS) != (name in UNPUBLISHED), name
    assert len(PRESETS) == 29 and len(UNPUBLISHED) == 3


def test_presets_are_valid_model_args():
    params = model_arg_names()  # the constructor's own args and every CacheConfig field
    for preset in PRESETS.values():
        args = preset.model_args
        assert set(args) <= params, (preset.name, set(args) - params)
        assert args["cache"] is True and args["transfer_ratio"] == 0.25
        assert args["prompt_interval"] >= 1 and args["response_interval"] >= 1
        assert args["steps"] == args["gen_length"]  # every source runs one step per token
        if preset.family == "llada":
            assert args["gen_length"] % args["block_length"] == 0 and "top_p" not in args
        else:
            assert args["temperature"] == 0.2 and args["top_p"] == 0.95 and args["alg"] == "entropy"
            assert "block_length" not in args and "cfg_scale" not in args
        assert preset.name.startswith(preset.family) and preset.model.split("/")[0] in ("GSAI-ML", "Dream-org")
        assert preset.lm_eval_args["tasks"] == (preset.local_task or preset.task)
        assert "scripts/run_" in preset.source and preset.script in preset.source


def test_values_from_the_dllm_cache_scripts():
    """A few rows checked against the scripts by hand (DESIGN.md lists the same)."""
    gsm = get_preset("llada-instruct-gsm8k")
    assert (gsm.model_args["gen_length"], gsm.model_args["block_length"]) == (256, 8)
    assert (gsm.model_args["prompt_interval"], gsm.model_args["response_interval"]) == (50, 7)
    assert gsm.lm_eval_args == {"tasks": "gsm8k_local", "num_fewshot": 4, "apply_chat_template": True,
                                "fewshot_as_multiturn": True}
    hotpot = get_preset("llada-instruct-hotpotqa")
    args = hotpot.model_args
    assert (args["gen_length"], args["prompt_interval"], args["response_interval"]) == (32, 100, 8)
    assert hotpot.local_task == "hotpotqa_long"
    assert get_preset("llada-instruct-math").model_args["response_interval"] == 1
    assert get_preset("llada-instruct-humaneval").model_args["block_length"] == 32
    assert get_preset("dream-instruct-humaneval").model_args["response_interval"] == 1
    assert get_preset("Dream-Base-GSM8K").task == "gsm8k_cot"  # names are case-insensitive


def test_unknown_and_unpublished_presets():
    with pytest.raises(ValueError, match=r"unknown preset 'llada-gsm8k'; known presets: dream-base-bbh, .*llada-instruct-gsm8k"):
        get_preset("llada-gsm8k")
    with pytest.raises(ValueError, match="does not exist: the dLLM-Cache scripts have no HotpotQA"):
        get_preset("dream-base-hotpotqa")


def test_explicit_args_override_a_preset():
    merged, preset = apply_preset({"pretrained": "x", "preset": "llada-instruct-gsm8k", "gen_length": "64",
                                   "response_interval": 2})
    assert preset.name == "llada-instruct-gsm8k"
    assert merged["gen_length"] == "64" and merged["response_interval"] == 2  # explicit wins
    assert merged["block_length"] == 8 and merged["prompt_interval"] == 50  # from the preset
    assert "preset" not in merged
    assert apply_preset({"pretrained": "x", "preset": ""}) == ({"pretrained": "x"}, None)


def test_preset_on_the_tiny_models(llada_dir, dream_dir):
    lm = DLLMCacheLM.create_from_arg_obj(
        {"pretrained": str(llada_dir), "preset": "llada-instruct-gsm8k", "gen_length": 16, "steps": 16},
        {"device": "cpu", "batch_size": 1},
    )
    assert lm.preset == "llada-instruct-gsm8k" and lm.gen_length == 16 and lm.block_length == 8
    cfg = lm.cache_config
    assert (cfg.prompt_interval, cfg.response_interval, cfg.transfer_ratio) == (50, 7, 0.25)
    assert lm.get_model_info()["dllm_cache"]["preset"] == "llada-instruct-gsm8k"
    dream = DLLMCacheLM.create_from_arg_obj(
        {"pretrained": str(dream_dir), "preset": "dream-base-gsm8k", "gen_length": 8, "steps": 8}, {"device": "cpu"}
    )
    assert (dream.temperature, dream.top_p, dream.alg) == (0.2, 0.95, "entropy")
    (text,) = dream.generate_until([SimpleNamespace(args=("1+1=", {"until": []}), task_name="t")], disable_tqdm=True)
    assert isinstance(text, str)
    wrong_family = "preset 'dream-base-gsm8k' is for Dream-org/Dream-v0-Base-7B .dream., but .* is a llada model"
    with pytest.raises(ValueError, match=wrong_family):
        DLLMCacheLM.create_from_arg_obj({"pretrained": str(llada_dir), "preset": "dream-base-gsm8k"}, {"device": "cpu"})
    with pytest.raises(ValueError, match="top_p=0.9 is an option of the dream sampler"):
        DLLMCacheLM(pretrained=str(llada_dir), device="cpu", top_p="0.9")


def test_launcher_expands_preset():
    expand = lm_eval_launch.expand_preset
    argv = expand(["--model_args", "pretrained=/m,gen_length=64", "--limit", "2"], "llada-instruct-gsm8k")
    assert argv[:2] == ["--model_args", "pretrained=/m,gen_length=64,preset=llada-instruct-gsm8k"]
    assert argv[2:] == ["--limit", "2", "--model", "dllm_cache", "--tasks", "gsm8k_local", "--num_fewshot", "4",
                        "--apply_chat_template", "--fewshot_as_multiturn"]
    # what the user gave stays; JSON model args work
    argv = expand(['--model_args={"pretrained": "/m"}', "--tasks", "arith_synth", "--num_fewshot=0"], "llada-base-bbh")
    assert json.loads(argv[0].split("=", 1)[1]) == {"pretrained": "/m", "preset": "llada-base-bbh"}
    assert argv[1:] == ["--tasks", "arith_synth", "--num_fewshot=0", "--model", "dllm_cache"]
    assert lm_eval_launch.split_launcher_options(["--preset", "x", "--compare", "--limit", "1"]) == (["--limit", "1"], "x", True)
    with pytest.raises(ValueError, match="--preset needs a name"):
        lm_eval_launch.split_launcher_options(["--preset"])


def test_dllm_cache_eval_preset_end_to_end(llada_dir, tmp_path, capsys, only_local_tasks):
    out_dir = tmp_path / "out"
    code = lm_eval_launch.main([
        "--preset", "llada-base-gsm8k", "--tasks", "arith_synth", "--limit", "1", "--output_path", str(out_dir),
        "--model_args", f"pretrained={llada_dir},device=cpu,gen_length=8,steps=8,block_length=8",
    ])
    assert code == 0
    (path,) = out_dir.rglob("results_*.json")
    results = json.loads(path.read_text())
    info = results["config"]["dllm_cache"]
    assert info["preset"] == "llada-base-gsm8k" and info["sampler"]["gen_length"] == 8  # explicit gen_length won
    # the results record every CacheConfig field: the preset's intervals, the rest at their defaults
    assert info["cache_config"] == dataclasses.asdict(CacheConfig(prompt_interval=100, response_interval=6, transfer_ratio=0.25))
    assert "num_fewshot: 4" in capsys.readouterr().out  # the preset's --num_fewshot reached lm-eval
    assert lm_eval_launch.main(["--preset", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_docs_preset_table_is_current():
    assert markdown_table() in (test_lm_eval.REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
