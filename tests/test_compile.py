"""CacheConfig(compile=True): the torch.compile'd cached layer computes what the eager one does.

Inductor on CPU; float32 sums may be reordered, hence a tolerance instead of bit equality.
"""

import warnings
from dataclasses import replace

import pytest
from torch._dynamo.utils import counters

import dllm_cache.compiled as compiled_mod
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
    seqs, mask = trajectory(small_model, batch=3, steps=6)
    with cache_enabled(small_model, CacheConfig(100, 4, 0.25)):
        eager = logits_along(small_model, seqs, mask)
    out, stats = _compiled_run(small_model, CacheConfig(100, 4, 0.25, compile=True), seqs, mask)
    assert max_err(out, eager) <= ATOL_FP32
    assert stats["partial_steps"] > 0 and stats["response_refresh_steps"] > 0  # both compiled kinds ran


def test_compiled_layer_reproduces_uncached_when_nothing_is_stale(small_model):
    """No prompt and every response token selected: the compiled path must give the uncached logits."""
    seqs, mask = trajectory(small_model, batch=2, prompt_len=0, resp_len=16, padded=False)
    ref = logits_along(small_model, seqs, mask)
    out, _ = _compiled_run(small_model, CacheConfig(100, 8, 1.0, compile=True), seqs, mask, prompt_length=0)
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
