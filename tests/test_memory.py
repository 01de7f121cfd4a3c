"""Memory: the cache's bytes by kind match the shape formula, and a generation that cannot fit
stops with a clear error before any work (device free memory mocked on CPU)."""

import pytest
import torch

import dllm_cache.analysis.memory as memory
from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.analysis.flops import ModelDims
from dllm_cache.engine.patch import cache_memory
from dllm_cache.hooks import sampler_of
from dllm_cache.models.tiny import dream_7b_config, llada_8b_config
from dllm_cache.sampling.generate import generate

P, R = 10, 16


def test_bytes_per_token_and_layer_of_the_real_shapes():
    llada = memory.bytes_per_token_layer(ModelDims.from_config(llada_8b_config()), 2)
    dream = memory.bytes_per_token_layer(ModelDims.from_config(dream_7b_config()), 2)
    assert llada == {"prompt": 16 * 1024, "response": 32 * 1024}  # K+V 2 x 4096, deltas 2 x 4096, bf16
    assert dream == {"prompt": 2 * 1024, "response": 2 * 1024 + 2 * 3584 * 2}  # GQA: 4 KV heads of 128


def test_state_bytes_match_the_shape_estimate(family, model):
    _check_state_bytes(family, model, 0.0)


def test_cfg_branch_doubles_the_cache():
    from dllm_cache.models.tiny import tiny_llada

    _check_state_bytes("llada", tiny_llada(), 1.0)


def _check_state_bytes(family, model, cfg_scale):
    ids = torch.randint(0, 200, (3, P), generator=torch.Generator().manual_seed(0))
    with cache_enabled(model, CacheConfig()):
        blocks = {} if sampler_of(model) == "dream" else {"block_length": 8}  # Dream's sampler has no blocks
        generate(model, ids, gen_length=R, steps=R, cfg_scale=cfg_scale, **blocks)
        held = cache_memory(model)
    dims = ModelDims.from_config(model.config, allow_moe=True)
    branches = 2 if cfg_scale else 1
    est = memory.estimate_cache_bytes(dims, 3, P, R, 4, prompt_logit_rows=1 if family == "dream" else 0)
    for kind in ("prompt_kv", "response_kv", "response_deltas", "prompt_deltas", "prompt_logits"):
        assert held[kind] == branches * est[kind], kind
    assert held["total"] == sum(v for k, v in held.items() if k != "total")


def test_plain_calls_keep_the_prompt_logits(model):
    """Without logits_to_keep a model call returns every row, so the prompt rows' logits are kept."""
    x = torch.randint(0, 200, (2, P + R))
    x[:, P:] = model.config.mask_token_id
    with cache_enabled(model, CacheConfig()):
        model(x)
        held = cache_memory(model)
    assert held["prompt_logits"] == 2 * P * model.config.vocab_size * 4


def _need(model, batch):
    dims = ModelDims.from_config(model.config, allow_moe=True)
    seq = P + R
    cache = memory.estimate_cache_bytes(dims, batch, P, R, 4, 0)["total"]
    return cache + memory.estimate_step_bytes(dims, batch, seq, 8, 4)


def test_generation_that_cannot_fit_stops_before_any_work(monkeypatch):
    from dllm_cache.models.tiny import tiny_llada

    model = tiny_llada()
    free = _need(model, 3) + 1  # batch 3 fits, batch 4 does not
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: free)
    calls = []
    model.model.transformer.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 200, (5, P))
    with cache_enabled(model, CacheConfig()):
        with pytest.raises(memory.NotEnoughMemoryError, match="batch 5 x 26 tokens .*largest batch that fits is 3"):
            generate(model, ids, gen_length=R, steps=R, block_length=8)
        assert calls == []
        generate(model, ids[:3], gen_length=R, steps=R, block_length=8)  # the batch it named runs
        monkeypatch.setenv(memory.CHECK_ENV, "0")
        generate(model, ids, gen_length=R, steps=R, block_length=8)  # the check can be turned off


def test_even_batch_one_too_big_says_shorten_the_prompt(monkeypatch):
    from dllm_cache.models.tiny import tiny_dream

    model = tiny_dream()
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: 1000)
    with cache_enabled(model, CacheConfig()):
        with pytest.raises(memory.NotEnoughMemoryError, match="Even batch 1 does not fit"):
            generate(model, torch.randint(0, 200, (1, P)), gen_length=R, steps=R)


def test_buffers_of_the_previous_generation_count_as_free(monkeypatch):
    """A second generation of the same shape reuses the cache's buffers: it needs no new room for them.

    Free memory is set to the need minus what the cache holds, give or take 64 bytes: just above it
    the second generation runs (and gives the first one's tokens), just below it stops, and a cache
    holding nothing yet is refused at the same free memory. So the check runs, counts the held
    buffers once (not zero times, not twice), and counts nothing else as free."""
    from dllm_cache.models.tiny import tiny_llada

    model = tiny_llada()
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    run = dict(gen_length=R, steps=R, block_length=8)
    free = {"bytes": 0}
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: free["bytes"])
    with cache_enabled(model, CacheConfig()):
        monkeypatch.setenv(memory.CHECK_ENV, "0")  # the first generation allocates the buffers
        first = generate(model, ids, **run)
        monkeypatch.delenv(memory.CHECK_ENV)
        held = cache_memory(model)["total"]
        assert held > 1000
        free["bytes"] = _need(model, 2) - held - 64
        with pytest.raises(memory.NotEnoughMemoryError, match="batch 2 x 26 tokens"):
            generate(model, ids, **run)
        free["bytes"] = _need(model, 2) - held + 64
        second = generate(model, ids, **run)
    assert torch.equal(second, first)
    with cache_enabled(model, CacheConfig()):  # a fresh cache holds nothing: the same free memory is short
        assert cache_memory(model)["total"] == 0
        with pytest.raises(memory.NotEnoughMemoryError, match="largest batch that fits is 1"):
            generate(model, ids, **run)


def test_largest_batch_search():
    assert memory.largest_batch(lambda b: 10 * b, 95) == 9
    assert memory.largest_batch(lambda b: 10 * b, 5) == 0
    assert memory.largest_batch(lambda b: 10 * b + 3, 10**6) == 99999
