"""CacheConfig(compile=True): the torch.compile'd cached layer computes what the eager one does, and
what the cache defines independently of that code: the uncached logits wherever nothing stale is
reused (no prompt and every response token recomputed, on both compiled step kinds; a block step
right after a refresh), the prompt rows' logits of the last prompt refresh, the hand-counted tokens.
Comparing compiled with eager alone runs the same source twice and cannot see a logic bug.

Inductor on CPU; float32 sums may be reordered, hence a tolerance instead of bit equality.
"""

import warnings
from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

import dllm_cache.engine.compiled as compiled_mod
from dllm_cache import CacheConfig, cache_enabled, cache_stats, reset_cache
from dllm_cache.models.tiny import tiny_llada
from tests.helpers import logits_along, max_err, trajectory

ATOL_FP32 = 1e-5


@pytest.fixture(scope="module")
def small_model():
    return tiny_llada(n_layers=2).eval()


def _compiled_run(model, config, seqs, mask, prompt_length=None):
    """Logits along `seqs` with the compiled layer; fails if compile fell back to eager."""
    calls_before = counters["stats"]["calls_captured"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the eager fallback warns: it must not happen here
        with cache_enabled(model, config):
            if prompt_length is not None:
                reset_cache(model, prompt_length=prompt_length)
            out = logits_along(model, seqs, mask)
            stats = cache_stats(model)
    assert counters["stats"]["calls_captured"] > calls_before  # dynamo really traced the layer
    return out, stats


def test_compiled_layer_matches_eager_on_default_schedule(small_model):
    P = 10  # trajectory's prompt length
    seqs, mask = trajectory(small_model, batch=3, steps=6)
    ref = logits_along(small_model, seqs, mask)
    with cache_enabled(small_model, CacheConfig(100, 4, 0.25)):
        eager = logits_along(small_model, seqs, mask)
    out, stats = _compiled_run(small_model, CacheConfig(100, 4, 0.25, compile=True), seqs, mask)
    assert max_err(out, eager) <= ATOL_FP32
    assert stats["partial_steps"] > 0 and stats["response_refresh_steps"] > 0  # both compiled kinds ran
    # independent of the layer's code: step 0 is a full refresh, later steps serve the prompt rows from it
    assert max_err(out[:1], ref[:1]) <= ATOL_FP32
    assert all(torch.equal(o[:, :P], out[0][:, :P]) for o in out[1:])
    assert max_err(out[1:], ref[1:]) > 1e-3  # and the response really reuses stale features


@pytest.mark.parametrize("kr,ratio", [(8, 1.0), (1, 0.25)], ids=["partial_steps_all_selected", "response_refreshes"])
def test_compiled_layer_reproduces_uncached_when_nothing_is_stale(small_model, kr, ratio):
    """No prompt, and every response token recomputed: the compiled path must give the uncached logits, on
    partial steps selecting all (Kr 8, ratio 1) and on response-refresh steps (Kr 1: steps 1-7 of 8; ratio
    0.25, so a refresh run as a partial step would reuse stale features and show)."""
    seqs, mask = trajectory(small_model, batch=2, prompt_len=0, resp_len=16, steps=8, padded=False)
    ref = logits_along(small_model, seqs, mask)
    out, stats = _compiled_run(small_model, CacheConfig(100, kr, ratio, compile=True), seqs, mask, prompt_length=0)
    assert stats["response_refresh_steps"] == (7 if kr == 1 else 0)
    assert stats["partial_steps"] == (0 if kr == 1 else 7)
    assert max_err(out, ref) <= ATOL_FP32


def test_compile_failure_falls_back_to_eager(small_model, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken_compile)
    seqs, mask = trajectory(small_model, batch=2, steps=4)
    with cache_enabled(small_model, CacheConfig(100, 8, 0.25)):
        eager = logits_along(small_model, seqs, mask)
    with cache_enabled(small_model, CacheConfig(100, 8, 0.25, compile=True)):
        with pytest.warns(UserWarning, match="torch.compile of the cached layer failed"):
            out = logits_along(small_model, seqs, mask)
    assert max_err(out, eager) == 0


def test_compiled_block_policy_matches_eager(small_model):
    """The block KV-cache layer compiled: same logits as eager, stale K/V and all."""
    from tests.test_block_cache import P, R, _blockwise

    seqs, mask = trajectory(small_model, batch=3, prompt_len=P, resp_len=R, steps=6)
    blocks = [0, 0, 0, 1, 1, 2]
    config = CacheConfig(policy="block-dual")
    with cache_enabled(small_model, config):
        eager = _blockwise(small_model, seqs, mask, blocks)
    calls_before = counters["stats"]["calls_captured"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with cache_enabled(small_model, CacheConfig(policy="block-dual", compile=True)):
            out = _blockwise(small_model, seqs, mask, blocks)
            assert cache_stats(small_model)["block_steps"] == 3
    assert counters["stats"]["calls_captured"] > calls_before
    assert max_err(out, eager) <= ATOL_FP32
    # independent of the layer's code: right after a refresh every cached K/V is current, so compiled
    # block steps on unchanged tokens give the uncached logits (tests/test_block_cache.py does it eagerly)
    same = [seqs[1]] * 4
    ref = _blockwise(small_model, same, mask, [1] * 4)
    with cache_enabled(small_model, CacheConfig(policy="block-dual", compile=True)):
        unchanged = _blockwise(small_model, same, mask, [1] * 4)
        assert cache_stats(small_model)["block_steps"] == 3
    assert max_err(unchanged, ref) <= ATOL_FP32


def test_compiled_layer_with_per_layer_budgets_matches_eager():
    """layer_ratios: each layer compiled with its own count of recomputed tokens, same logits as eager."""
    model = tiny_llada(n_layers=3).eval()
    seqs, mask = trajectory(model, batch=2, steps=5)
    config = CacheConfig(100, 8, layer_ratios=(1.0, 0.25, 0.75))
    with cache_enabled(model, config):
        eager = logits_along(model, seqs, mask)
    out, stats = _compiled_run(model, replace(config, compile=True), seqs, mask)
    assert max_err(out, eager) <= ATOL_FP32
    assert stats["tokens_recomputed"] == 4 * 2 * (4 + 12)  # 4 partial steps, 2 rows, int(16 * 0.25) + int(16 * 0.75)
