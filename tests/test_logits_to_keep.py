"""logits_to_keep: a cached model computes and keeps only the logits rows the caller asks for,
and those rows equal what the all-rows call returns (prompt rows served from the last refresh)."""

import pytest
import torch

import dllm_cache.sampling.generate as gen_mod
from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.engine.patch import cache_memory
from dllm_cache.engine.step import _logit_rows
from dllm_cache.hooks import sampler_of
from dllm_cache.models.tiny import tiny_llada
from dllm_cache.sampling.generate import generate
from tests.helpers import logits_along, max_err, trajectory

ATOL_FP32 = 1e-5
P, R = 10, 16  # trajectory() defaults


@pytest.mark.parametrize(
    "keep,rows",
    [(None, (0, 26)), (0, (0, 26)), (5, (21, 26)), (99, (0, 26)), (slice(9, 25), (9, 25)), (slice(-3, None), (23, 26))],
)
def test_logit_rows_follow_transformers(keep, rows):
    assert _logit_rows(keep, 26) == rows


@pytest.mark.parametrize("keep", [-1, True, 2.0, slice(0, 10, 2), slice(5, 5), torch.arange(3)])
def test_bad_logits_to_keep_is_a_clear_error(keep):
    with pytest.raises(ValueError, match="logits_to_keep"):
        _logit_rows(keep, 26)


ROWS = [(P - 1, P + R - 1), (P + 4, P + 12), (0, P + R)]
ROW_IDS = ["dream", "block", "all"]


@pytest.mark.parametrize("rows", ROWS, ids=ROW_IDS)
def test_kept_rows_equal_all_rows(model, rows):
    """Default schedule (stale features in play): asking for rows [lo, hi) gives those rows of
    the all-rows call, step by step."""
    _check_kept_rows(model, rows)


@pytest.mark.parametrize("rows", ROWS, ids=ROW_IDS)
def test_kept_rows_without_head_module(rows):
    """A weight-tied LLaDA has no LM head module to patch: the cache keeps prompt-row deltas and
    slices the logits instead."""
    _check_kept_rows(tiny_llada(weight_tying=True), rows)


def _check_kept_rows(model, rows):
    lo, hi = rows
    kp = 4
    seqs, mask = trajectory(model, batch=3)
    cfg = CacheConfig(prompt_interval=kp, response_interval=3, transfer_ratio=0.25)  # every step kind
    with cache_enabled(model, cfg):
        full = logits_along(model, seqs, mask)
    with cache_enabled(model, cfg):
        kept = [model(s, attention_mask=mask, logits_to_keep=slice(lo, hi)).logits for s in seqs]
    assert all(k.shape == (3, hi - lo, f.shape[-1]) for k, f in zip(kept, full))
    assert max_err(kept, [f[:, lo:hi] for f in full]) <= ATOL_FP32
    # Prompt rows between refreshes are those the last prompt refresh computed.
    n_prompt = max(min(hi, P) - lo, 0)
    for step, k in enumerate(kept):
        refresh = full[step - step % kp]
        assert torch.equal(k[:, :n_prompt], refresh[:, lo : lo + n_prompt])


def test_refresh_every_step_kept_rows_equal_uncached(model):
    seqs, mask = trajectory(model, batch=3)
    ref = [x[:, P - 1 :] for x in logits_along(model, seqs, mask)]
    with cache_enabled(model, CacheConfig(1, 1, 0.25)):
        out = [model(s, attention_mask=mask, logits_to_keep=R + 1).logits for s in seqs]
    assert max_err(out, ref) <= ATOL_FP32


def test_prompt_rows_not_kept_at_refresh_is_a_clear_error(model):
    seqs, mask = trajectory(model, batch=1, padded=False)
    with cache_enabled(model, CacheConfig()):
        model(seqs[0], logits_to_keep=slice(P, P + R))  # the refresh keeps no prompt row
        with pytest.raises(ValueError, match="prompt rows 9..9 were asked for on a cached step"):
            model(seqs[1], logits_to_keep=slice(P - 1, P + R))


def test_prompt_rows_served_from_a_wider_refresh(model):
    """A refresh that kept every row serves any prompt rows later (offset into the kept ones)."""
    seqs, mask = trajectory(model, batch=2)
    with cache_enabled(model, CacheConfig()):
        first = model(seqs[0], attention_mask=mask).logits
        later = model(seqs[1], attention_mask=mask, logits_to_keep=slice(P - 3, P + 2)).logits
    assert torch.equal(later[:, :3], first[:, P - 3 : P])


def test_samplers_keep_only_the_rows_they_score(family, model):
    """LLaDA keeps no prompt logits, Dream only row P-1; no prompt-row deltas either way."""
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    with cache_enabled(model, CacheConfig()):
        generate(model, ids, gen_length=R, steps=R, **({} if family == "dream" else {"block_length": 8}))
        mem = cache_memory(model)
    vocab, itemsize = model.config.vocab_size, 4
    assert mem["prompt_logits"] == (2 * 1 * vocab * itemsize if family == "dream" else 0)
    assert mem["prompt_deltas"] == 0
    d = model.config.hidden_size
    assert mem["response_deltas"] == 2 * model.config.num_hidden_layers * R * 2 * d * itemsize


def test_samplers_give_the_same_tokens_as_all_rows_logits(model, monkeypatch):
    """Default cache schedule: the sampler that asks for its rows only decodes exactly what it
    decoded when the model returned every row (the behaviour before logits_to_keep)."""
    _check_same_tokens(model, monkeypatch)


def test_cfg_sampler_gives_the_same_tokens_as_all_rows_logits(monkeypatch):
    _check_same_tokens(tiny_llada(), monkeypatch, cfg_scale=1.5)


def _check_same_tokens(model, monkeypatch, **kwargs):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (3, P), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    run = dict(gen_length=24, steps=24, **kwargs)
    if sampler_of(model) == "llada":  # Dream's sampler has no blocks
        run["block_length"] = 8
    cfg = CacheConfig(prompt_interval=10, response_interval=4, transfer_ratio=0.25)
    with cache_enabled(model, cfg):
        new = generate(model, ids, mask, **run)
    monkeypatch.setattr(gen_mod, "_logits_of_rows",
                        lambda m, inputs, msk, lo, hi: m(**inputs, attention_mask=msk).logits[:, lo:hi])
    with cache_enabled(model, cfg):
        old = generate(model, ids, mask, **run)
    assert torch.equal(new, old)


@pytest.mark.parametrize("rows", ROWS, ids=ROW_IDS)
def test_uncached_rows_do_not_keep_the_full_logits(model, rows):
    """The samplers' rows of an uncached forward live in their own memory: a view would keep
    every row's logits alive through the next step's forward (twice the logits at the peak)."""
    lo, hi = rows
    ids = torch.randint(0, model.config.vocab_size - 1, (2, P + R))
    kept = gen_mod._logits_of_rows(model, {"input_ids": ids}, None, lo, hi)
    full = model(ids).logits
    assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size() == 2 * (hi - lo) * full.shape[-1] * 4
    assert torch.equal(kept, full[:, lo:hi])
