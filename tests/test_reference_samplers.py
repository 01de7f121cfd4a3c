"""Our samplers (dllm_cache.sampling.generate) against plain references of the upstream ones
(tests/reference_samplers.py), token for token, on the tiny models (fp32, CPU).

Every case runs a batch of three left-padded prompts (0, 2 and 4 pad tokens), so padding is always
covered; LLaDA runs two semi-AR blocks. Greedy (temperature 0) and seeded sampling: the same torch
seed before each call must give the same tokens. Our samplers draw random numbers only for the
current window's positions (they compute only its logits), where upstream draws them for the whole
sequence (LLaDA) or only for the masked positions (Dream): the references reproduce both orders
(`rng=`), the tests compare ours exactly with `rng="ours"`, check that `rng="upstream"` gives the
same tokens wherever no random number is drawn, and pin that seeded tokens do differ from
upstream's draw order (same distribution, other assignment of draws to positions). The cache at
refresh-every-step (Kp = Kr = 1) must give the uncached tokens.

Mutants (issue 29, item 2), each applied alone to a scratch copy of dllm_cache/sampling/generate.py; what failed:
- mask token back in LLaDA's confidence softmax (argmax still excluding it): 2 tests,
  test_the_mask_token_never_takes_probability_mass[llada-*];
- Gumbel noise drawn in float32 instead of float64: 9 tests, every seeded LLaDA-sampler case;
- Dream's logit shift dropped (rows lo..hi instead of lo-1..hi-1): 14 tests, every Dream case (and 2 golden tests);
- top_k applied before top_p (the order before this module): 5 tests, the Dream cases with both filters.
Found by this module: the Dream sampler applied top_k before top_p (transformers' order); Dream's
sample_tokens applies top_p first, which keeps another token set when both are given (fixed in
dllm_cache/sampling/generate.py, commit "Dream sampler: top_p before top_k").
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.models.tiny import tiny_dream, tiny_llada, tiny_llada_moe, tiny_mmada
from dllm_cache.sampling.generate import generate
from tests.helpers import padded_prompts
from tests.reference_samplers import dream_reference, llada_reference

SEED = 3
LLADA_FAMILIES = {"llada": tiny_llada, "llada_moe": tiny_llada_moe, "mmada": tiny_mmada}
LLADA_SHAPE = dict(gen_length=16, steps=8, block_length=8)  # two blocks of 8, 4 steps each
DREAM_SHAPE = dict(gen_length=16, steps=8)  # Dream's own single window
REFRESH_EVERY_STEP = CacheConfig(prompt_interval=1, response_interval=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a busy 2-core machine two OpenMP threads
    turn each of the MoE's many small ops into a wait for the other thread (measured 2 s per step
    instead of 3 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"dream": tiny_dream(), **{name: make() for name, make in LLADA_FAMILIES.items()}}


def _prompts(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return padded_prompts(model, batch=3, length=8)  # (3, 8), row r has 2r pads in front


def _seeded(fn, *args, **kwargs) -> torch.Tensor:
    torch.manual_seed(SEED)
    return fn(*args, **kwargs)


def _assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    diff = (ours != ref).nonzero().tolist()
    assert not diff, f"{len(diff)} tokens differ from the reference, first (row, col): {diff[:5]}\nours {ours}\nref  {ref}"


def _boost_mask_logit(model: nn.Module, factor: float) -> nn.Module:
    """Scale the output layer's mask-token row so [MASK] takes a large, position-dependent share of
    the softmax (a trained model predicts it rarely; a tiny random one uniformly): the test case
    where leaving it in the confidence softmax, or letting the argmax pick it, changes tokens."""
    vocab = model.config.vocab_size
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == vocab][-1]
    with torch.no_grad():
        head.weight[model.config.mask_token_id] *= factor
    return model


# --------------------------------------------------------------------------------------- LLaDA sampler

LLADA_CASES = {
    "greedy": dict(),
    "sampled": dict(temperature=0.8),
    "random-greedy": dict(remasking="random"),
    "random-sampled": dict(remasking="random", temperature=0.8),
    "cfg-sampled": dict(cfg_scale=1.5, temperature=0.8),
}
LLADA_MATRIX = [("llada", case) for case in LLADA_CASES] + [
    (family, case) for family in ("llada_moe", "mmada") for case in ("greedy", "cfg-sampled")
]


@pytest.mark.parametrize("family, case", LLADA_MATRIX)
def test_llada_sampler_matches_reference(models, family, case):
    model = models[family]
    ids, mask = _prompts(model)
    kw = {**LLADA_SHAPE, **LLADA_CASES[case]}
    _assert_same(_seeded(generate, model, ids, mask, **kw), _seeded(llada_reference, model, ids, mask, **kw))


@pytest.mark.parametrize("family", sorted(LLADA_FAMILIES))
def test_llada_sampler_with_refresh_every_step_cache_matches_reference(models, family):
    model = models[family]
    ids, mask = _prompts(model)
    kw = {**LLADA_SHAPE, **LLADA_CASES["cfg-sampled"]}
    with cache_enabled(model, REFRESH_EVERY_STEP):
        ours = _seeded(generate, model, ids, mask, **kw)
    _assert_same(ours, _seeded(llada_reference, model, ids, mask, **kw))


def test_llada_scoring_only_the_block_equals_upstreams_whole_sequence_scoring(models):
    """At temperature 0 no random number is drawn: upstream's draw order (whole sequence) and its
    whole-sequence top-k give our tokens, for low-confidence remasking and for CFG."""
    model = models["llada"]
    ids, mask = _prompts(model)
    for extra in (dict(), dict(cfg_scale=1.5)):
        kw = {**LLADA_SHAPE, **extra}
        _assert_same(generate(model, ids, mask, **kw), llada_reference(model, ids, mask, rng="upstream", **kw))


def test_llada_seeded_draws_differ_from_upstreams_order(models):
    """Documented difference: we draw Gumbel noise for the current block's columns only (its logits
    are all we compute), upstream for every column, so the same seed gives other tokens."""
    model = models["llada"]
    ids, mask = _prompts(model)
    kw = {**LLADA_SHAPE, **LLADA_CASES["sampled"]}
    ours = _seeded(generate, model, ids, mask, **kw)
    assert (ours != _seeded(llada_reference, model, ids, mask, rng="upstream", **kw)).any()


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_the_mask_token_never_takes_probability_mass(family, temperature):
    """Documented difference (DESIGN.md, Fidelity facts): we drop [MASK] before sampling and before the
    confidence softmax; upstream keeps it. With a model that gives [MASK] a large share, ours must
    equal the reference with the mask excluded, never leave a mask in the output, and differ from
    upstream's rule (which confirms the case is sensitive to the mask token at all)."""
    model = _boost_mask_logit(tiny_llada() if family == "llada" else tiny_dream(), 4.0)
    ids, mask = _prompts(model)
    if family == "llada":
        ref_fn, kw = llada_reference, {**LLADA_SHAPE, "temperature": temperature}
    else:
        ref_fn, kw = dream_reference, {**DREAM_SHAPE, "alg": "maskgit_plus", "temperature": temperature}
    ours = _seeded(generate, model, ids, mask, **kw)
    _assert_same(ours, _seeded(ref_fn, model, ids, mask, **kw))
    assert not (ours[:, ids.shape[1]:] == model.config.mask_token_id).any()
    assert (ours != _seeded(ref_fn, model, ids, mask, exclude_mask=False, **kw)).any()

# --------------------------------------------------------------------------------------- Dream sampler

DREAM_CASES = {
    "greedy": dict(),
    "sampled": dict(temperature=0.8, top_p=0.9, top_k=20),  # both filters: their order matters
}


@pytest.mark.parametrize("case", sorted(DREAM_CASES))
@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin", "origin"])
def test_dream_matches_reference(models, alg, case):
    model = models["dream"]
    ids, mask = _prompts(model)
    kw = {**DREAM_SHAPE, "alg": alg, **DREAM_CASES[case]}
    _assert_same(_seeded(generate, model, ids, mask, **kw), _seeded(dream_reference, model, ids, mask, **kw))


@pytest.mark.parametrize("extra", [dict(alg_temp=0.5, temperature=0.8), dict(block_length=8, temperature=0.8, top_p=0.9)],
                         ids=["alg_temp", "blocks"])
def test_dream_alg_temp_and_blocks_match_reference(models, extra):
    model = models["dream"]
    ids, mask = _prompts(model)
    kw = {**DREAM_SHAPE, "alg": "entropy", **extra}
    _assert_same(_seeded(generate, model, ids, mask, **kw), _seeded(dream_reference, model, ids, mask, **kw))


def test_dream_with_refresh_every_step_cache_matches_reference(models):
    model = models["dream"]
    ids, mask = _prompts(model)
    kw = {**DREAM_SHAPE, "alg": "entropy", **DREAM_CASES["sampled"]}
    with cache_enabled(model, REFRESH_EVERY_STEP):
        ours = _seeded(generate, model, ids, mask, **kw)
    _assert_same(ours, _seeded(dream_reference, model, ids, mask, **kw))


def test_dream_greedy_equals_upstreams_masked_positions_only_sampling(models):
    """At temperature 0 upstream's way (score only the masked positions, top-k over whole rows)
    gives our tokens; seeded sampling differs (draws for masked positions only vs the window)."""
    model = models["dream"]
    ids, mask = _prompts(model)
    for alg in ("entropy", "topk_margin"):
        kw = {**DREAM_SHAPE, "alg": alg}
        _assert_same(generate(model, ids, mask, **kw), dream_reference(model, ids, mask, rng="upstream", **kw))
    kw = {**DREAM_SHAPE, "alg": "entropy", **DREAM_CASES["sampled"]}
    assert (_seeded(generate, model, ids, mask, **kw) != _seeded(dream_reference, model, ids, mask, rng="upstream", **kw)).any()
