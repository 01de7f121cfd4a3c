"""Samplers: shapes, prompt preserved, no masks left; cached with refresh-every-step == uncached."""

import pytest
import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache
from dllm_cache.sampling.generate import generate, tokens_per_step


def _prompts(model, batch=3, length=12):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 200, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ids[0, :4] = model.config.pad_token_id
    return ids, mask


def test_tokens_per_step_spreads_evenly():
    out = tokens_per_step(torch.tensor([10, 3]), 4)
    assert out.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


LLADA_VARIANTS = [
    dict(),
    dict(remasking="random", temperature=0.7),
    dict(cfg_scale=1.5),
    dict(threshold=0.3),
]


@pytest.mark.parametrize("kwargs", LLADA_VARIANTS, ids=["lowconf", "random", "cfg", "threshold"])
def test_llada_sampler_cached_refresh_every_step_equals_uncached(kwargs):
    from dllm_cache.models.tiny import tiny_llada

    model = tiny_llada()
    ids, mask = _prompts(model)
    torch.manual_seed(0)
    ref = generate(model, ids, mask, gen_length=16, steps=16, block_length=8, **kwargs)
    assert ref.shape == (3, 28)
    assert torch.equal(ref[:, :12], ids)
    assert not (ref == model.config.mask_token_id).any()
    with cache_enabled(model, CacheConfig(1, 1, 0.25)):
        torch.manual_seed(0)
        out = generate(model, ids, mask, gen_length=16, steps=16, block_length=8, **kwargs)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
def test_dream_sampler_cached_refresh_every_step_equals_uncached(alg):
    from dllm_cache.models.tiny import tiny_dream

    model = tiny_dream()
    ids, mask = _prompts(model)
    ref = generate(model, ids, mask, gen_length=16, steps=16, alg=alg)
    assert ref.shape == (3, 28) and not (ref == model.config.mask_token_id).any()
    with cache_enabled(model, CacheConfig(1, 1, 0.25)):
        out = generate(model, ids, mask, gen_length=16, steps=16, alg=alg)
    assert torch.equal(out, ref)


def test_default_cache_generation_runs_and_counts(model, family):
    ids, mask = _prompts(model)
    enable_cache(model)
    generate(model, ids, mask, gen_length=32, steps=32, **({"block_length": 16} if family == "llada" else {}))
    stats = cache_stats(model)
    disable_cache(model)
    assert stats["steps"] == 32 and stats["full_steps"] == 1 and stats["response_refresh_steps"] == 3
    assert stats["recompute_fraction"] == pytest.approx(0.25)


def test_cache_under_a_user_step_loop(model):
    """No sampler from us: a hand-written loop calling model(x) still gets cached steps and new generations."""
    ids, mask = _prompts(model, batch=1)
    mask_id = model.config.mask_token_id
    x = torch.cat([ids, torch.full((1, 8), mask_id)], dim=1)
    full = torch.ones_like(x)
    with cache_enabled(model, CacheConfig(prompt_interval=100, response_interval=4, transfer_ratio=0.5)):
        for _ in range(8):
            logits = model(x, attention_mask=full).logits
            pos = (x[0] == mask_id).nonzero()[0, 0]
            x[0, pos] = logits[0, pos].argmax()
        first = cache_stats(model)
        model(torch.cat([ids.flip(1), torch.full((1, 8), mask_id)], dim=1))  # a new prompt
        second = cache_stats(model)
    assert first["generations"] == 1 and first["full_steps"] == 1 and first["response_refresh_steps"] == 1
    assert first["partial_steps"] == 6
    assert second["generations"] == 2


def test_bad_sampler_arguments(model):
    ids, mask = _prompts(model)
    with pytest.raises(ValueError):
        generate(model, ids, mask, gen_length=10, steps=10, block_length=4, remasking="nope", alg="nope")
