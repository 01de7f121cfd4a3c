"""The cache against a plain reference of what it defines (tests/reference_cache.py,
tests/reference_block_cache.py), step by step, on its approximate path: partial steps, prompt
refreshes, the frontier and paper selections, the drift trigger, the token clock under threshold
decoding, per-layer budgets and the block policies, on every family, with left padding and batch 3.

Each case runs our sampler twice on the same prompts, once on the cached model and once on the
reference (behind the model's call signature), and compares every step: the input ids (so the
tokens), the rows asked for, and their logits in fp32 on CPU within ATOL; then the outputs.

ATOL = 2e-5: with every step refreshed the reference equals the uncached model up to float32
rounding, and both differ from the engine by 3e-6 .. 1.2e-5 on these tiny models (logits up to ~5,
3 layers; explicit softmax attention and RoPE vs SDPA, matmuls over row subsets vs all rows). A
stale or wrong feature moves the logits by 1e-3 or more (see the mutants below).

Ties: the selection is a top-k over cosines. The reference records the smallest gap at the k
boundary per step (and the drift's distance to the threshold); a mismatch message prints them, and
a gap below 1e-6 there means a tie that float32 may break either way, not a bug. Over ~7,000
selections per run gaps near 1e-6 are expected by chance: the smallest these seeds see is 1.06e-6
(LLaDA, layer_ratios), above float32's ~1e-7 rounding of a cosine. Dream runs 16 steps, not 32 (see
STEPS): a step that unmasks nothing makes every cosine exactly 1, a tie no seed avoids.

Mutants this file catches (applied one at a time to a scratch copy of the engine, 2026-12-03; 40 cases):
(a) V-verify compares each token's new V with its neighbour's cached V: 17 fail (logits off by 6e-3 .. 1.5
    at step 1); equivalent where the frontier window alone fills the budget (LLaDA sampler, block 8 = k) and
    under the drift trigger (the similarity is computed once and passed to the selection).
(b) partial steps write fresh V only for the selected tokens: 24 fail.
(c) the frontier window one block late: 20 fail (every frontier case).
(d) prompt refresh every Kp + 1 steps: 11 fail (every case with a finite Kp < steps).
(e) block-dual recomputes one row fewer: 8 fail (every block-dual case).
block_start="incremental" (12 cases, 2026-12-03): a block start recomputing the new block only, or the
last block's range one row short: 12 fail each; full steps every Kp + 1 steps: 8 fail (every finite-Kp case).
response_clock="tokens" (12 cases, 2026-12-03): the count compared with > instead of >= Kr: 7 fail; the count
ignored (the step clock alone): 12 fail; the batch rule as the row that committed most instead of the mean: 4
fail (the 4 batch-3 cases).
Also caught: the frontier ignoring Dream's logit shift (7 fail), layer 0 not always refreshed (24), frontier
levels weighted 0.001 instead of 3 (20), the drift trigger's `since >= min_interval` as `>` (4),
block_refresh's `since >= N` as `>` (8), round() for int() in the budget (4: where R * ratio has a
fraction >= .5), the frontier never remembering the tokens at the last refresh (7).
"""

from __future__ import annotations

import math

import pytest
import torch

import dllm_cache.sampling.generate as generate_module
from dllm_cache import CacheConfig, cache_stats, disable_cache, enable_cache, reset_cache
from dllm_cache.hooks import sampler_of
from dllm_cache.sampling.generate import dream_generate, llada_generate
from tests.conftest import FACTORIES
from tests.helpers import padded_prompts, trajectory
from tests.reference_block_cache import ReferenceBlockCache
from tests.reference_cache import ReferenceFeatureCache, ReferenceModel

ATOL = 2e-5
TIE = 1e-6  # a top-k boundary gap (or a drift-threshold distance) below this is a float32 tie
GEN, BLOCK = 32, 8  # 4 semi-AR blocks of 8 tokens
# LLaDA's sampler: one token per row per step. Dream's schedule unmasks int(n * (1 - s/t)) tokens,
# which at 32 steps for 32 tokens rounds to 0 on some steps: a step whose input equals the last
# one's gives every response token cos = 1 exactly, a true top-k tie. At 16 steps every step unmasks.
STEPS = {"llada": 32, "dream": 16}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and on 2 shared cores a second thread's
    synchronisation made each small matmul ~60x slower (4.8 ms vs 0.07 ms measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sample(model, ids, mask, block_length, family_model=None, threshold=None):
    """Our sampler of the model's family (family_model: the model whose family decides, for the reference)."""
    sampler = llada_generate if sampler_of(family_model or model) == "llada" else dream_generate
    return sampler(model, ids, mask, gen_length=GEN, steps=_steps(family_model or model), block_length=block_length,
                   threshold=threshold)


def _steps(model) -> int:
    return STEPS[sampler_of(model)]


def _engine_run(model, config, ids, mask, block_length, threshold=None):
    """Cached generation; every forward recorded as (ids, rows asked, logits)."""
    calls = []

    def record(module, args, kwargs, out):
        x = args[0] if args else kwargs["input_ids"]
        keep = kwargs.get("logits_to_keep")
        rows = (0, x.shape[1]) if keep is None else keep.indices(x.shape[1])[:2]
        calls.append((x.clone(), rows, out.logits.detach().clone()))

    enable_cache(model, config)
    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        out = _sample(model, ids, mask, block_length, threshold=threshold)
        stats = cache_stats(model)
    finally:
        handle.remove()
        disable_cache(model)
    return out, calls, stats


def _reference_run(model, config, ids, mask, block_length, monkeypatch, threshold=None):
    """The same generation on the reference; the sampler asks it for its rows as it asks a cached model."""
    declared = block_length or GEN if sampler_of(model) == "llada" else block_length  # what each sampler declares
    if config.is_block:
        cache = ReferenceBlockCache(model, config, ids.shape[1], declared)
    else:  # the threshold rule reports what it commits; the fixed schedule does not
        cache = ReferenceFeatureCache(model, config, ids.shape[1], declared, reports_commits=threshold is not None)
    ref = ReferenceModel(model, cache)
    cached = generate_module.is_cache_enabled
    monkeypatch.setattr(generate_module, "is_cache_enabled", lambda m: m is ref or cached(m))
    out = _sample(ref, ids, mask, block_length, model, threshold=threshold)
    monkeypatch.setattr(generate_module, "is_cache_enabled", cached)
    return out, ref


def _describe(ref, step: int) -> str:
    recs = ref.cache.records[: step + 1]
    rec = recs[-1]
    if rec.refresh_prompt:
        kind = "full" if rec.refresh_response else "prompt"
    else:
        kind = "response" if rec.refresh_response else "partial"
    margin = min((r.min_margin for r in recs), default=math.inf)
    tie = f" -- a top-k boundary gap below {TIE}: a float32 tie, not necessarily a bug" if margin < TIE else ""
    return f"step {step} ({kind}); smallest top-k boundary gap up to here {margin:.2e}{tie}"


def _compare(engine_calls, ref, out_e, out_r) -> None:
    ref_calls = ref.calls
    for step, ((xe, rows_e, le), (xr, _, rows_r, lr)) in enumerate(zip(engine_calls, ref_calls)):
        assert torch.equal(xe, xr), f"tokens diverged before {_describe(ref, step)}"
        assert rows_e == rows_r, f"rows asked differ at step {step}: {rows_e} vs {rows_r}"
        err = (le - lr).abs().max().item()
        assert err <= ATOL, f"logits differ by {err:.2e} > {ATOL} at {_describe(ref, step)}"
    assert len(engine_calls) == len(ref_calls), f"{len(engine_calls)} engine steps, {len(ref_calls)} reference steps"
    assert torch.equal(out_e, out_r)


def _prompts(model, seed: int = 0):
    return padded_prompts(model, batch=3, length=10, seed=seed)  # row r: 2r pad tokens in front


def _partial_steps(ref) -> int:
    return sum(not r.refresh_response for r in ref.cache.records)


FEATURE_CONFIGS = {
    "default": CacheConfig(),  # Kp 100, Kr 8, ratio 0.25, frontier
    "paper+prompt": CacheConfig(prompt_interval=5, response_interval=7, selection="paper"),
    "frontier+prompt": CacheConfig(prompt_interval=4, response_interval=6, transfer_ratio=0.3),
    "layer_ratios": CacheConfig(prompt_interval=None, response_interval=6, layer_ratios=(0.25, 0.1, 0.5)),
}


@pytest.mark.parametrize("name", sorted(FEATURE_CONFIGS))
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_feature_cache_matches_reference(family, name, monkeypatch):
    model = FACTORIES[family]()
    config = FEATURE_CONFIGS[name]
    ids, mask = _prompts(model)
    block = BLOCK if sampler_of(model) == "llada" else None  # Dream decodes one window, as its own sampler
    out_e, calls, stats = _engine_run(model, config, ids, mask, block)
    out_r, ref = _reference_run(model, config, ids, mask, block, monkeypatch)
    _compare(calls, ref, out_e, out_r)
    partial = _partial_steps(ref)
    assert partial >= _steps(model) // 2 and stats["partial_steps"] + stats["prompt_refresh_steps"] == partial


# Parallel decoding on these tiny random models: their confidences sit around 0.02 .. 0.1, so a threshold of
# 0.05 commits 1 .. 8 tokens per row and step (a block of 8 in 1 .. 5 steps), and the token clock fires.
# In a batch a row whose block is full waits, unmasking nothing: its cosines are all exactly 1, a true
# top-k tie. So selections run on one row ("Kr3", "Kr3+paper+prompt"); the batch rule (the mean over
# rows) on 3 rows with transfer_ratio 0 ("batch3"), where partial steps select nothing.
THRESHOLD = 0.05
TOKEN_CLOCK = {
    "Kr3": (CacheConfig(response_interval=3, response_clock="tokens"), 1),
    "Kr3+paper+prompt": (CacheConfig(prompt_interval=5, response_interval=3, selection="paper",
                                     response_clock="tokens"), 1),
    "batch3": (CacheConfig(response_interval=4, transfer_ratio=0.0, response_clock="tokens"), 3),
}


@pytest.mark.parametrize("name", sorted(TOKEN_CLOCK))
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_token_clock_matches_reference(family, name, monkeypatch):
    """response_clock "tokens" under threshold decoding: a response refresh once the rows have unmasked Kr
    tokens each on average since the last one, or after Kr steps. Some refreshes must come from the tokens alone (fewer
    than Kr steps since the last), and partial steps must remain."""
    model = FACTORIES[family]()
    config, batch = TOKEN_CLOCK[name]
    ids, mask = _prompts(model)
    ids, mask = ids[-batch:], None if mask is None else mask[-batch:]  # the last row: 4 pad tokens in front
    out_e, calls, stats = _engine_run(model, config, ids, mask, BLOCK, THRESHOLD)
    out_r, ref = _reference_run(model, config, ids, mask, BLOCK, monkeypatch, THRESHOLD)
    _compare(calls, ref, out_e, out_r)
    recs = ref.cache.records
    by_tokens = [i for i, r in enumerate(recs) if r.refresh_response and 0 < r.since < config.response_interval]
    assert by_tokens, "the token clock never fired alone: pick a lower threshold or a smaller Kr"
    assert _partial_steps(ref) >= 2 and stats["partial_steps"] + stats["prompt_refresh_steps"] == _partial_steps(ref)


DRIFT = CacheConfig(prompt_interval=None, response_interval=8, response_drift_threshold=0.02, response_min_interval=2)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_drift_trigger_matches_reference(family, monkeypatch):
    """Response refreshes planned from the measured drift: the same steps refresh, and the engine's
    recorded drift of each step equals the reference's."""
    model = FACTORIES[family]()
    ids, mask = _prompts(model)
    block = BLOCK if sampler_of(model) == "llada" else None
    out_e, calls, stats = _engine_run(model, DRIFT, ids, mask, block)
    out_r, ref = _reference_run(model, DRIFT, ids, mask, block, monkeypatch)
    recs = ref.cache.records
    close = [(i, r.drift) for i, r in enumerate(recs) if abs(r.drift - DRIFT.response_drift_threshold) < TIE]
    assert not close, f"drift within {TIE} of the threshold (a float32 tie) at steps {close}; pick another threshold"
    _compare(calls, ref, out_e, out_r)
    triggered = sum(r.triggered for r in recs)
    assert 0 < triggered < _partial_steps(ref), "the threshold must trigger some refreshes and leave partial steps"
    assert stats["drift_refreshes"] == triggered
    measured = [r.drift for r in recs if not r.refresh_response]
    assert stats["drift"]["cond"]["drift"] == pytest.approx(measured, abs=1e-5)


@pytest.mark.parametrize("config", [
    CacheConfig(prompt_interval=3, response_interval=8, shifted_row="response"),
    CacheConfig(prompt_interval=None, response_interval=8, frontier_only=True, frontier_window=5, transfer_ratio=0.5),
], ids=["shifted_row=response", "frontier_only"])
def test_dream_options_match_reference(config, monkeypatch):
    """Dream's last prompt row cached with the response, and a capped frontier budget with an explicit
    window, under Dream's semi-AR blocks."""
    model = FACTORIES["dream"]()
    ids, mask = _prompts(model, seed=1)
    out_e, calls, stats = _engine_run(model, config, ids, mask, BLOCK)
    out_r, ref = _reference_run(model, config, ids, mask, BLOCK, monkeypatch)
    _compare(calls, ref, out_e, out_r)
    assert _partial_steps(ref) >= _steps(model) // 2


BLOCK_CONFIGS = {
    "prefix": CacheConfig(policy="block-prefix"),
    "dual": CacheConfig(policy="block-dual"),
    "prefix+refresh": CacheConfig(policy="block-prefix", block_refresh=3),
    "dual+refresh": CacheConfig(policy="block-dual", block_refresh=2),
    # block_start="incremental": full forwards on step 0 only (Kp 100 > steps), or every Kp steps
    "dual+incremental": CacheConfig(policy="block-dual", block_start="incremental"),
    "dual+incremental+Kp": CacheConfig(policy="block-dual", block_start="incremental", prompt_interval=6),
    "prefix+incremental+Kp": CacheConfig(policy="block-prefix", block_start="incremental", prompt_interval=5),
}


@pytest.mark.parametrize("name", sorted(BLOCK_CONFIGS))
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_block_cache_matches_reference(family, name, monkeypatch):
    model = FACTORIES[family]()
    config = BLOCK_CONFIGS[name]
    ids, mask = _prompts(model)
    out_e, calls, stats = _engine_run(model, config, ids, mask, BLOCK)
    out_r, ref = _reference_run(model, config, ids, mask, BLOCK, monkeypatch)
    _compare(calls, ref, out_e, out_r)
    block_steps = sum(r is not None for r in ref.cache.regions)
    assert block_steps >= _steps(model) // 2 and stats["block_steps"] == block_steps


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_every_row_matches_reference(family):
    """A hand-made trajectory asking for every row: prompt rows' logits (served from the last prompt
    refresh) as well as the response's, on steps of every kind."""
    model = FACTORIES[family]()
    config = CacheConfig(prompt_interval=3, response_interval=4, transfer_ratio=0.4)
    seqs, mask = trajectory(model, batch=3, prompt_len=10, resp_len=20, steps=10)
    ref = ReferenceFeatureCache(model, config, prompt_len=10)
    enable_cache(model, config)
    reset_cache(model, prompt_length=10)
    refreshed = None  # the reference's prompt-row logits at the last prompt refresh
    try:
        for step, s in enumerate(seqs):
            expected = ref(s, mask)
            err = (model(s, attention_mask=mask).logits - expected).abs().max().item()
            gap = min(r.min_margin for r in ref.records)
            assert err <= ATOL, f"logits differ by {err:.2e} > {ATOL} at step {step}; smallest top-k boundary gap {gap:.2e}"
            # The reference serves prompt rows from the last refresh by composition alone (the same
            # input plus the same cached deltas): check that it does, bit for bit.
            if ref.records[-1].refresh_prompt:
                refreshed = expected[:, :10]
            assert torch.equal(expected[:, :10], refreshed), f"reference prompt rows moved at step {step}"
    finally:
        disable_cache(model)
    assert {(r.refresh_prompt, r.refresh_response) for r in ref.records} == {(True, True), (True, False), (False, True),
                                                                              (False, False)}
