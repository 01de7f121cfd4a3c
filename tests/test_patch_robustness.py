"""The cache under real use: copies undo like the original, a hand-written loop that restarts
without reset_cache is detected, stats reset, backward is refused clearly, nested
cache_enabled restores the user's config, numpy numbers configure it."""

import copy
import pickle

import numpy as np
import pytest
import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache, is_cache_enabled, reset_cache
from dllm_cache.sampling.generate import generate
from tests.helpers import padded_prompts

COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m))}


def _instance_forwards(model) -> dict:
    return {name: m.__dict__.get("forward") for name, m in model.named_modules()}


@pytest.mark.parametrize("how", sorted(COPIES))
def test_copy_of_a_cached_model_undoes_exactly(model, how):
    ids, mask = padded_prompts(model)
    ref = generate(model, ids, mask, gen_length=8, steps=8)
    enable_cache(model, CacheConfig(1, 1, 0.25))
    generate(model, ids, mask, gen_length=8, steps=8)  # the original holds features
    twin = COPIES[how](model)
    assert is_cache_enabled(twin) and cache_stats(twin)["steps"] == 8  # config and stats travel
    assert torch.equal(generate(twin, ids, mask, gen_length=8, steps=8), ref)
    disable_cache(twin)
    assert all(forward is None for forward in _instance_forwards(twin).values())
    assert torch.equal(generate(twin, ids, mask, gen_length=8, steps=8), ref)
    with cache_enabled(twin, CacheConfig(1, 1, 1.0)):
        assert torch.equal(generate(twin, ids, mask, gen_length=8, steps=8), ref)
    assert not is_cache_enabled(twin)
    # The original is untouched by what happened to its copy.
    assert is_cache_enabled(model) and torch.equal(generate(model, ids, mask, gen_length=8, steps=8), ref)
    disable_cache(model)
    assert all(forward is None for forward in _instance_forwards(model).values())


def test_copy_runs_on_its_own_weights(model):
    """The copy's patched forwards call the copy's modules, not the original's."""
    ids, mask = padded_prompts(model)
    enable_cache(model, CacheConfig(1, 1, 0.25))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    plain = copy.deepcopy(twin)
    disable_cache(plain)
    assert torch.allclose(twin(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits, atol=1e-5)


def _greedy_loop(model, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """A user's own loop: unmask each row's most confident masked token per step, no reset_cache."""
    mask_id = model.config.mask_token_id
    x = x.clone()
    seen = []
    for _ in range(steps):
        logits = model(x).logits.detach().clone()
        seen.append(logits)
        conf, tok = logits.softmax(-1).max(-1)
        pos = conf.masked_fill(x != mask_id, -1.0).argmax(dim=1)
        rows = torch.arange(x.shape[0])
        x[rows, pos] = tok[rows, pos]
    return seen


def test_own_loop_same_prompt_twice_starts_a_new_generation(model):
    ids, _ = padded_prompts(model, batch=1)
    x = torch.cat([ids, torch.full((1, 8), model.config.mask_token_id)], dim=1)
    with cache_enabled(model, CacheConfig(100, 4, 0.25)):
        first = _greedy_loop(model, x, 8)
        second = _greedy_loop(model, x, 8)
        stats = cache_stats(model)
    assert stats["generations"] == 2 and stats["full_steps"] == 2
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_own_loop_after_a_sampler_starts_a_new_generation(model, family):
    """Our samplers declare their generation; once they return, a user loop on the same shape
    must not continue it."""
    ids, _ = padded_prompts(model, batch=1)
    x = torch.cat([ids, torch.full((1, 8), model.config.mask_token_id)], dim=1)
    with cache_enabled(model, CacheConfig(100, 4, 0.25)):
        ref = _greedy_loop(model, x, 8)
        generate(model, ids, gen_length=8, steps=8)
        again = _greedy_loop(model, x, 8)
    assert all(torch.equal(a, b) for a, b in zip(ref, again))


def test_cache_stats_reset(model):
    ids, mask = padded_prompts(model)
    with cache_enabled(model):
        generate(model, ids, mask, gen_length=8, steps=8)
        read = cache_stats(model, reset=True)
        assert read["steps"] == 8 and read["generations"] == 1
        zero = cache_stats(model)
        assert zero["steps"] == 0 and zero["generations"] == 0 and zero["recompute_fraction"] is None
        generate(model, ids, mask, gen_length=8, steps=8)
        assert cache_stats(model)["steps"] == 8


def test_backward_through_the_cache_is_a_clear_error(model):
    ids, mask = padded_prompts(model)
    with cache_enabled(model):
        logits = model(ids, attention_mask=mask).logits
        with pytest.raises(RuntimeError, match="inference-only.*disable_cache"):
            logits.sum().backward()
        with torch.no_grad():  # inference stays plain tensors
            assert not model(ids, attention_mask=mask).logits.requires_grad
    model(ids, attention_mask=mask).logits.sum().backward()  # uncached again: gradients flow
    grads = [p.grad is not None for p in model.parameters() if p.requires_grad]
    # a mixture of experts leaves experts no token was routed to without gradients
    assert all(grads) if getattr(model.config, "num_experts", None) is None else sum(grads) > len(grads) // 2


def test_cache_enabled_restores_the_previous_config(model):
    ids, mask = padded_prompts(model)
    mine = CacheConfig(50, 4, 0.5)
    enable_cache(model, mine)
    with cache_enabled(model, CacheConfig(1, 1, 1.0)) as inner:
        assert inner is model
        generate(model, ids, mask, gen_length=8, steps=8)
        assert cache_stats(model)["full_steps"] == 8
    assert is_cache_enabled(model)
    assert model.__dict__["_dllm_cache_state"].state.config == mine
    generate(model, ids, mask, gen_length=8, steps=8)
    assert cache_stats(model)["full_steps"] == 1  # Kp=50: one full step
    disable_cache(model)


def test_numpy_numbers_configure_the_cache():
    cfg = CacheConfig(np.int64(50), np.int32(4), np.float64(0.5), cfg_interval=np.int16(2))
    assert cfg == CacheConfig(50, 4, 0.5, cfg_interval=2)
    assert all(type(v) is int for v in (cfg.prompt_interval, cfg.response_interval, cfg.cfg_interval))
    with pytest.raises(ValueError, match="prompt_interval must be an integer"):
        CacheConfig(np.float64(2.0))


def test_reset_declares_until_the_next_reset(model):
    """A declared generation is not re-checked per step (no host sync) until the next reset."""
    ids, _ = padded_prompts(model, batch=1)
    x = torch.cat([ids, torch.full((1, 8), model.config.mask_token_id)], dim=1)
    with cache_enabled(model, CacheConfig(100, 4, 0.25)):
        reset_cache(model, prompt_length=ids.shape[1])
        _greedy_loop(model, x, 3)
        reset_cache(model, prompt_length=ids.shape[1])
        _greedy_loop(model, x, 3)
        assert cache_stats(model)["generations"] == 2
