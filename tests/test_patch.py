"""enable/disable is an exact undo; models are cached independently; errors are helpful."""

import pytest
import torch
from torch import nn

from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache, is_cache_enabled
from dllm_cache.hooks import adapter_for, family_of
from dllm_cache.models.tiny import tiny_dream, tiny_llada, tiny_llada_moe, tiny_mmada
from tests.helpers import logits_along, trajectory


def test_disable_restores_bit_identical(model):
    seqs, mask = trajectory(model)
    before = logits_along(model, seqs, mask)
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    enable_cache(model)
    logits_along(model, seqs, mask)
    disable_cache(model)
    assert not is_cache_enabled(model)
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards
    after = logits_along(model, seqs, mask)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_enable_disable_enable_again(model):
    seqs, mask = trajectory(model)
    ref = logits_along(model, seqs, mask)
    cfg = CacheConfig(1, 1, 0.25)
    for _ in range(2):
        enable_cache(model, cfg)
        out = logits_along(model, seqs, mask)
        disable_cache(model)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, ref))
    enable_cache(model)
    enable_cache(model, cfg)  # re-enabling replaces the config
    assert cache_stats(model)["steps"] == 0
    disable_cache(model)
    disable_cache(model)  # no-op


def test_two_models_side_by_side():
    a, b = tiny_llada(seed=1), tiny_llada(seed=2)
    sa, ma = trajectory(a, seed=3)
    sb, mb = trajectory(b, seed=4)
    ref_a, ref_b = logits_along(a, sa, ma), logits_along(b, sb, mb)
    with cache_enabled(a, CacheConfig(1, 1, 0.5)), cache_enabled(b, CacheConfig(1, 8, 1.0)):
        out_a, out_b = [], []
        for xa, xb in zip(sa, sb):  # interleaved steps
            out_a.append(a(xa, attention_mask=ma).logits)
            out_b.append(b(xb, attention_mask=mb).logits)
        assert cache_stats(a)["steps"] == cache_stats(b)["steps"] == len(sa)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(out_a, ref_a))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(out_b, ref_b))


def test_family_detection():
    assert family_of(tiny_llada()) == "llada"
    assert family_of(tiny_dream()) == "dream"
    assert family_of(tiny_llada_moe()) == "llada_moe"
    assert family_of(tiny_mmada()) == "llada"  # LLaDA blocks over a joint text + image vocabulary


def test_unknown_model_error_lists_families():
    class NotADiffusionLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="Supported families: llada .*dream .*llada_moe"):
        adapter_for(NotADiffusionLM())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt_interval=0), "prompt_interval must be an integer >= 1"),
        (dict(response_interval=2.5), "response_interval must be an integer >= 1"),
        (dict(transfer_ratio=1.5), r"transfer_ratio must be a number in \[0, 1\]"),
        (dict(transfer_ratio=-0.1), "transfer_ratio"),
        (dict(cfg_interval=0), "cfg_interval"),
        (dict(compile="yes"), "compile must be True or False"),
        (dict(cuda_graphs=1), "cuda_graphs must be True or False"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheConfig(**kwargs)


def test_enable_rejects_non_config(model):
    with pytest.raises(TypeError, match="CacheConfig"):
        enable_cache(model, {"transfer_ratio": 0.5})


def test_missing_or_double_input_is_a_clear_error(model):
    ids = torch.randint(0, 200, (1, 6))
    with cache_enabled(model):
        with pytest.raises(ValueError, match="exactly one of input_ids .* or inputs_embeds"):
            model(input_ids=None)
        with pytest.raises(ValueError, match="exactly one of input_ids .* or inputs_embeds"):
            model(input_ids=ids, inputs_embeds=model.get_input_embeddings()(ids))
