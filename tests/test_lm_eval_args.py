"""lm-eval model args: wrong-family / unknown ones fail at construction naming the valid ones;
lm-eval's default device=cuda:0 on a CPU machine runs on cpu without a warning; generation
progress advances per denoising step."""

import logging

import pytest

import dllm_cache

pytest.importorskip("lm_eval")

from dllm_cache.integrations.lm_eval.model import DLLMCacheLM  # noqa: E402
from tests.test_cli import CACHE_FIELD_VALUES, CACHE_FIELDS  # noqa: E402
from tests.test_lm_eval import _save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("llada_args"), "llada")


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("dream_args"), "dream")


def test_wrong_family_and_bad_choices_fail_at_construction(llada_dir, dream_dir):
    with pytest.raises(ValueError, match="alg='bogus' is an option of the dream sampler"):
        DLLMCacheLM(pretrained=str(llada_dir), device="cpu", alg="bogus")
    with pytest.raises(ValueError, match="alg must be one of"):
        DLLMCacheLM(pretrained=str(dream_dir), device="cpu", alg="bogus")
    with pytest.raises(ValueError, match="cfg_scale=1.5 is an option of the llada sampler"):
        DLLMCacheLM(pretrained=str(dream_dir), device="cpu", cfg_scale="1.5")
    with pytest.raises(ValueError, match="remasking must be one of"):
        DLLMCacheLM(pretrained=str(llada_dir), device="cpu", remasking="nope")


def test_unknown_model_arg_lists_the_valid_ones(llada_dir):
    with pytest.raises(ValueError, match=r"unknown dllm_cache model arg\(s\) \['gen_lenght'\]; valid: .*gen_length"):
        DLLMCacheLM.create_from_arg_string(f"pretrained={llada_dir},gen_lenght=8")


def test_cli_default_cuda_device_falls_back_quietly(llada_dir, monkeypatch, caplog, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        lm = DLLMCacheLM.create_from_arg_obj(
            {"pretrained": str(llada_dir), "gen_length": 4, "steps": 4}, {"device": "cuda:0", "batch_size": 1}
        )
    assert lm._device.type == "cpu"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "CUDA is not available: running on cpu" in capsys.readouterr().err


def test_generation_progress_advances_per_step(llada_dir, capsys):
    from types import SimpleNamespace

    lm = DLLMCacheLM(pretrained=str(llada_dir), device="cpu", gen_length=4, steps=4)
    request = SimpleNamespace(args=("Question: 1+1?\nAnswer:", {"until": ["\n"]}))
    lm.generate_until([request])
    err = capsys.readouterr().err
    assert "llada:" in err and "| 0/4 [" in err  # a bar over the 4 steps (erased when done: leave=False)


@pytest.mark.parametrize("name", CACHE_FIELDS)
def test_every_cache_field_is_a_model_arg(llada_dir, name):
    """`--model_args ...,cache=on,<field>=<value>` (lm-eval's string form) reaches the model's CacheConfig,
    and the results record it; the value table and its companions are test_cli's."""
    text, companions, expected = CACHE_FIELD_VALUES[name]
    pairs = ",".join(f"{key}={value}" for key, value in {**companions, name: text}.items())
    lm = DLLMCacheLM.create_from_arg_string(f"pretrained={llada_dir},device=cpu,gen_length=8,steps=8,cache=on,{pairs}")
    assert getattr(lm.cache_config, name) == expected
    recorded = lm.get_model_info()["dllm_cache"]["cache_config"][name]
    assert recorded == expected
    assert dllm_cache.is_cache_enabled(lm.model)


def test_pretrained_shipped_is_the_installed_model():
    from dllm_cache import shipped

    lm = DLLMCacheLM.create_from_arg_string("pretrained=SHIPPED,device=cpu,gen_length=8,steps=8")
    assert lm.family == "llada"
    assert lm.model.config.name_or_path == str(shipped.default_model_dir())
