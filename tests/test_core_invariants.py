"""Invariants of the engine core that mutation testing found unchecked (issue 29, item 4).

Each test here kills mutants of dllm_cache's core that survived the core test subset
(`bash eval/mutation/run.sh`; eval/results/mutation.json lists them). They check exact values of small
pure functions at their boundaries, on tensors built by hand, so they take milliseconds; the few
that need a model use the tiny configs for a step or two.
"""

from __future__ import annotations

import functools
import types

import pytest
import torch

from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache, reset_cache
from dllm_cache.engine.frontier import decoding_window, frontier_priority
from dllm_cache.engine.layer_budget import ramp_ratios
from dllm_cache.engine.v_verify import value_similarity
from dllm_cache.hooks import adapter_for
from dllm_cache.models.rope import rope_cos_sin
from dllm_cache.models.tiny import tiny_llada
from dllm_cache.sampling.generate import _dream_count_bound, _dream_logits, _dream_sample, _filter_logits, gumbel_argmax
from dllm_cache.sampling.unmasking import EarlyStop, factor_pick, threshold_pick, tokens_per_step, topk_rows
from tests.helpers import logits_along, max_err, trajectory


def test_ramp_ratios_at_the_edges_of_what_is_valid():
    """spread 1 and a deepest ratio of exactly 1 or 0 are valid; 3 layers already ramp (2 partial
    layers); 1 layer is just layer 0."""
    assert ramp_ratios(4, 0.2, 1.0) == pytest.approx((0.2, 0.0, 0.2, 0.4))  # spread 1: the first partial layer gets 0
    assert ramp_ratios(4, 0.5, 1.0) == pytest.approx((0.5, 0.0, 0.5, 1.0))  # deepest layer exactly 1
    assert ramp_ratios(4, 0.5, 0.5) == pytest.approx((0.5, 0.25, 0.5, 0.75))
    assert ramp_ratios(3, 0.0) == (0.0, 0.0, 0.0)  # no budget at all is valid
    assert ramp_ratios(3, 0.2, 0.5) == pytest.approx((0.2, 0.1, 0.3))  # two partial layers ramp
    assert ramp_ratios(1, 0.3) == (0.3,)
    for bad in (True, 2.5, 0):
        with pytest.raises(ValueError, match="n_layers"):
            ramp_ratios(bad, 0.2)


E, P, M, F = 7, 8, 9, 7  # end, pad, mask ids; the fill token is the (first) end id


def test_early_stop_finds_each_rows_own_end_token():
    """Each row is judged on its own first end token: nothing masked before it, only end / pad /
    masks after it; done rows get their masks after it filled, the others are left alone."""
    response = torch.tensor([
        [1, 2, E, M, M],  # complete: masks after the end are filled
        [M, M, M, M, M],  # no end token: not done, even though everything after position 0 is masked
        [3, M, E, M, 4],  # a mask before the end: not done
        [5, E, 4, M, M],  # a real token after the end: not done
        [E, P, M, E, M],  # the end first, then pad, end and masks: done, every mask filled
        [1, 2, 3, 4, 5],  # nothing masked but no end token either: not done
    ])  # fmt: skip
    expected = response.clone()
    expected[0, 3:] = F
    expected[4, [2, 4]] = F
    done = EarlyStop([E], [P], response.device).apply(response, M)
    assert done.tolist() == [True, False, False, False, True, False]
    assert torch.equal(response, expected)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


def test_tensor_rules_keep_their_tensors_on_the_input_device():
    """The decoding and frontier rules run on the device of their inputs (no CPU temporaries): on the
    meta device, any tensor made on the CPU instead fails to combine with the inputs."""
    conf = torch.tensor([[0.9, 0.1, -torch.inf, 0.5], [0.2, 0.8, 0.7, -torch.inf]])
    counts = torch.tensor([1, 2])
    tokens = torch.tensor([[5, 5, M, M], [M, M, M, M]])
    on_meta = {
        "topk_rows": lambda: topk_rows(_meta(conf), _meta(counts), 2),
        "threshold_pick": lambda: threshold_pick(_meta(conf), 0.5),
        "factor_pick": lambda: factor_pick(_meta(conf), 1.0),
        "tokens_per_step": lambda: tokens_per_step(_meta(counts), 3),
        "early_stop": lambda: EarlyStop([E], [P], torch.device("meta")).apply(_meta(tokens), M),
        "decoding_window": lambda: decoding_window(_meta(tokens), M, 2, True),
        "frontier_priority": lambda: frontier_priority(_meta(tokens), _meta(tokens), M, 2, True, 1, 1),
    }
    for name, call in on_meta.items():
        out = call()
        assert out.device.type == "meta", name
    # the frontier's priority levels are small integers (int8: one byte per response row)
    assert frontier_priority(tokens, tokens, M, 2, True, 1, 1).dtype == torch.int8
    assert frontier_priority(tokens, None, M, 2, True, 0, 0).dtype == torch.int8


def test_prompt_rows_from_kept_deltas_equal_prompt_logits_from_the_head():
    """Two ways to serve prompt rows between prompt refreshes must agree: a model whose LM head the
    cache patches keeps the prompt logits of the last prompt refresh; a weight-tied LLaDA (no head
    module to patch) keeps the prompt rows' attention / FFN deltas and recomputes the rows from them.
    Same weights, same steps (Kp 2: step 2 refreshes the prompt while the response is partial)."""
    tied = tiny_llada(weight_tying=True)
    untied = tiny_llada(weight_tying=False)
    state = tied.state_dict()
    state["model.transformer.ff_out.weight"] = state["model.transformer.wte.weight"]
    untied.load_state_dict(state)
    seqs, mask = trajectory(tied, batch=2, prompt_len=6, resp_len=8, steps=4)
    config = CacheConfig(prompt_interval=2, response_interval=4, transfer_ratio=0.25)
    logits = {}
    for name, model in (("tied", tied), ("untied", untied)):
        with cache_enabled(model, config):
            reset_cache(model, prompt_length=6)
            logits[name] = logits_along(model, seqs, mask)
            assert cache_stats(model)["prompt_refresh_steps"] == 1
    assert max_err(logits["tied"], logits["untied"]) < 1e-5
    assert torch.equal(logits["tied"][3][:, :6], logits["tied"][2][:, :6])  # prompt rows: the step-2 refresh's


def test_factor_rule_is_strict_at_the_boundary():
    """Fast-dLLM's factor rule accepts the n-th token only if (n + 1)(1 - c_n) < factor, strictly:
    here n = 2 gives 3 * 0.25 = 0.75 exactly (representable), equal to the factor, so only the first."""
    conf = torch.tensor([[0.9, 0.75, 0.1, -torch.inf]])
    assert factor_pick(conf, 0.75).tolist() == [[True, False, False, False]]
    assert factor_pick(conf, 0.7500001).tolist() == [[True, True, False, False]]


def test_top_p_one_filters_nothing():
    """top_p = 1 keeps the whole distribution: the nucleus filter is skipped, so float32 rounding of
    the cumulative probability past 1.0 (it happens in some of these rows) cannot drop a tail token."""
    logits = 3 * torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_filter_logits(logits, 1.0, None), logits)
    assert torch.equal(_filter_logits(logits, None, 0), logits)  # top_k 0: no top-k filter either


def _nucleus_by_hand(row: list[float], top_p: float) -> set[int]:
    """Dream's top-p rule, one row at a time: in order of decreasing probability, keep each token
    while the probability mass before it is at most top_p (so the most likely token always stays)."""
    probs = torch.tensor(row).softmax(-1).tolist()
    kept, before = set(), 0.0
    for i in sorted(range(len(row)), key=lambda j: -row[j]):
        if before > top_p:
            break
        kept.add(i)
        before += probs[i]
    return kept


def test_top_k_and_top_p_keep_what_the_rules_say_per_row():
    logits = torch.tensor([
        [0.1, 2.0, -1.0, 1.2, 0.7, -0.3],
        [1.5, -2.0, 0.2, 0.3, 2.5, 1.0],
        [-0.5, 0.0, 3.0, -1.5, 0.4, 0.9],
    ])  # fmt: skip
    for top_p in (0.3, 0.6, 0.9):
        out = _filter_logits(logits, top_p, None)
        kept = out.isfinite()
        assert torch.equal(out[kept], logits[kept]) and (out[~kept] == -torch.inf).all()
        for r, row in enumerate(logits.tolist()):
            assert set(kept[r].nonzero().flatten().tolist()) == _nucleus_by_hand(row, top_p), (top_p, r)
    for top_k in (1, 2, 5, 6, 10):
        out = _filter_logits(logits, None, top_k)
        kth = logits.sort(dim=-1, descending=True).values[:, min(top_k, 6) - 1 : min(top_k, 6)]
        assert torch.equal(out, logits.masked_fill(logits < kth, -torch.inf)), top_k
        assert (out.isfinite().sum(-1) == min(top_k, 6)).all()
    # both: a subset of what top-k alone keeps, whichever rule runs first
    both = _filter_logits(logits, 0.9, 3)
    assert (both.isfinite() <= _filter_logits(logits, None, 3).isfinite()).all()
    # exact boundaries: four equal tokens have probability exactly 0.25 each
    flat = torch.zeros(1, 4)
    assert int(_filter_logits(flat, 0.5, None).isfinite().sum()) == 3  # mass before the 3rd token: 0.5, kept
    assert int(_filter_logits(flat, None, 2).isfinite().sum()) == 4  # ties with the k-th token are kept


def test_dream_sample_draws_and_scores_as_each_alg_says():
    """Greedy at temperature 0; otherwise one draw per row from softmax(logits / T) (the same draw as
    torch.multinomial under the same seed), confidence the drawn token's probability; topk_margin
    and entropy replace the confidence, never the token. Rows (..., vocab) of any leading shape."""
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(-1)
    conf, tokens = _dream_sample(logits, "maskgit_plus", 0.0, None, None)
    assert conf.shape == tokens.shape == (2, 3)
    assert torch.equal(tokens, logits.argmax(-1)) and torch.allclose(conf, probs.max(-1).values)
    for temperature in (0.7, 1.0, 1.5):
        tempered = (logits / temperature).softmax(-1).reshape(-1, 7)
        torch.manual_seed(0)
        conf, tokens = _dream_sample(logits, "maskgit_plus", temperature, None, None)
        torch.manual_seed(0)
        drawn = torch.multinomial(tempered, 1).squeeze(-1)
        assert torch.equal(tokens, drawn.reshape(2, 3)), temperature
        assert torch.allclose(conf, tempered.gather(-1, drawn[:, None]).reshape(2, 3)), temperature
    top2 = probs.topk(2, dim=-1).values
    conf, tokens = _dream_sample(logits, "topk_margin", 0.0, None, None)
    assert torch.allclose(conf, top2[..., 0] - top2[..., 1]) and torch.equal(tokens, logits.argmax(-1))
    conf, _ = _dream_sample(logits, "entropy", 0.0, None, None)
    assert torch.allclose(conf, (probs * probs.log()).sum(-1))
    # the filters apply before the softmax: with top_k 2 the best token's probability is renormalised
    conf, _ = _dream_sample(logits, "maskgit_plus", 0.0, None, 2)
    assert torch.allclose(conf, top2[..., 0] / top2.sum(-1))
    conf, _ = _dream_sample(logits, "maskgit_plus", 0.0, 0.3, None)
    kept = _filter_logits(logits.reshape(-1, 7), 0.3, None).softmax(-1).max(-1).values
    assert torch.allclose(conf, kept.reshape(2, 3))


class _RowLogits(torch.nn.Module):
    """A stand-in model whose logits row j is filled with j (+ 100 when given a padding mask):
    shows which rows a sampler reads, and that the mask reached the model."""

    def forward(self, input_ids, attention_mask=None):
        batch, seq = input_ids.shape
        rows = torch.arange(seq, dtype=torch.float32)[None, :, None].expand(batch, seq, 4)
        return types.SimpleNamespace(logits=rows + (0.0 if attention_mask is None else 100.0))


def test_dream_reads_the_row_before_each_token():
    """Dream's logits are shifted: token j is predicted by row j - 1, and token 0 (no row before it)
    by row 0 itself."""
    ids = torch.zeros(2, 6, dtype=torch.long)

    def rows(lo: int, hi: int, mask: torch.Tensor | None = None) -> list[float]:
        return _dream_logits(_RowLogits(), {"input_ids": ids}, mask, lo, hi)[0, :, 0].tolist()

    assert rows(2, 5) == [1.0, 2.0, 3.0]
    assert rows(1, 4) == [0.0, 1.0, 2.0]
    assert rows(0, 3) == [0.0, 0.0, 1.0]  # no prompt: token 0 reads row 0
    assert rows(0, 1) == [0.0]
    mask = torch.ones_like(ids)
    assert rows(2, 4, mask) == [101.0, 102.0] and rows(0, 2, mask) == [100.0, 100.0]


def test_dream_count_bound_covers_every_count_the_device_computes():
    """The host-side bound on a Dream step's count: at least int(n * (1 - s / t)) for every n <= window
    masks left, computed as the sampler does (float32 timesteps on the device), the whole window on the
    last step; and tight (the count for a full window, + 1 for rounding)."""
    # eps 0, 4 steps: t = 1, 0.75, 0.5, 0.25, 0 -> full-window counts 2, 2.67 -> 2, 4, then all 8
    assert _dream_count_bound(8, 4, 0.0) == [3, 3, 5, 8]
    for window, steps, eps in ((8, 4, 1e-3), (32, 16, 1e-3), (5, 7, 0.1)):
        bound = _dream_count_bound(window, steps, eps)
        ts = torch.linspace(1, eps, steps + 1)
        n = torch.arange(window + 1, dtype=torch.float32)
        for i in range(steps - 1):
            counts = (n * (1 - ts[i + 1] / ts[i])).long()
            assert int(counts.max()) <= bound[i] <= min(window, int(counts.max()) + 1), (window, steps, i)
        assert bound[-1] == window


def test_value_similarity_is_the_cosine_over_all_heads_at_any_scale():
    """V-verify's score is the cosine of a token's Values over all heads together, so it does not
    depend on their scale (small Values, e.g. after a norm with small weights, score like large ones)."""
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    flat = lambda v: v.transpose(1, 2).reshape(2, 5, 12)  # noqa: E731  (batch, tokens, heads * head_dim)
    expected = torch.nn.functional.cosine_similarity(flat(new), flat(old), dim=-1)
    for scale in (1e-3, 1.0, 1e3):
        assert torch.allclose(value_similarity(new * scale, old * scale), expected, atol=1e-6), scale
    assert torch.equal(value_similarity(torch.zeros(1, 1, 2, 4), torch.ones(1, 1, 2, 4)), torch.zeros(1, 2))


def test_decoding_window_edges():
    """A row with nothing masked has an empty window even when the response is not a whole number of
    blocks (the block that would hold R is partial); a one-token response works too."""
    done = torch.tensor([[5, 5, 5, 5, 5, 5]])  # R 6, blocks of 4: block 1 would be [4, 8)
    assert not decoding_window(done, M, 4, block_aligned=True).any()
    assert not decoding_window(done, M, 4, block_aligned=False).any()
    one = torch.tensor([[M], [5]])
    assert decoding_window(one, M, 4, block_aligned=True).tolist() == [[True], [False]]


def test_gumbel_argmax_is_greedy_without_noise_and_float64_gumbel_otherwise():
    """Temperature 0 is the plain argmax and draws no random numbers (a greedy step leaves the seeded
    stream to the steps after it); otherwise LLaDA's rule: argmax of exp(logits) / (-log u)^T with
    u ~ U(0, 1) drawn in float64 (in float32 the draws, and so the tokens, differ); over the vocabulary of
    each (batch, block) position."""
    logits = 4 * torch.randn(16, 32, 50, generator=torch.Generator().manual_seed(2))  # (batch, block, vocab)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(gumbel_argmax(logits, 0), logits.argmax(-1))
    assert torch.equal(torch.get_rng_state(), state)
    for temperature in (0.5, 1.0):
        torch.manual_seed(0)
        tokens = gumbel_argmax(logits, temperature)
        torch.manual_seed(0)
        noise = torch.rand_like(logits.double())
        expected = (logits.double().exp() / (-noise.log()) ** temperature).argmax(-1)
        assert torch.equal(tokens, expected), temperature
        assert not torch.equal(tokens, logits.argmax(-1))  # the noise changes some tokens


def test_pick_rules_at_their_boundaries():
    """The threshold is strict (a confidence equal to it is not enough, but the row's best is always
    taken); topk_rows picks each row's own count of highest confidences, with or without the host-side
    bound kmax, and a row with nothing to pick gets nothing from the at-least-one rule."""
    conf = torch.tensor([[0.5, 0.25, 0.75], [0.5, 0.1, 0.2]])
    assert threshold_pick(conf, 0.5).tolist() == [[False, False, True], [True, False, False]]
    counts = torch.tensor([2, 0])
    expected = [[True, False, True], [False, False, False]]
    assert topk_rows(conf, counts).tolist() == expected
    assert topk_rows(conf, counts, 3).tolist() == expected
    assert topk_rows(conf, torch.tensor([3, 1])).tolist() == [[True, True, True], [True, False, False]]
    nothing = torch.full((1, 3), -torch.inf)
    assert not threshold_pick(nothing, 0.5).any() and not factor_pick(nothing, 1.0).any()
    assert threshold_pick(torch.tensor([[0.2]]), 0.9).tolist() == [[True]]  # one candidate: taken


def test_patched_head_and_blocks_called_outside_a_forward_act_as_the_plain_modules():
    """A cached model's LM head and blocks, called directly (not inside the model's forward), are the
    plain modules: same outputs as with the cache disabled."""
    model = tiny_llada()
    adapter = adapter_for(model)
    head, block = adapter.lm_head(model), adapter.blocks(model)[1]
    h = torch.randn(2, 5, model.config.d_model, generator=torch.Generator().manual_seed(0))
    rope = rope_cos_sin(torch.arange(5).expand(2, 5), model.config.d_model // model.config.n_heads, model.config.rope_theta)
    plain_logits, plain_block = head(h), block(h, rope)[0]
    with cache_enabled(model, CacheConfig()):
        assert torch.equal(head(h), plain_logits)
        assert torch.equal(block(h, rope)[0], plain_block)
        assert torch.equal(block(h, rope=rope, key_mask=None)[0], plain_block)  # keyword arguments pass through too


@pytest.mark.parametrize("name", ["x", "hidden_states"])
def test_block_input_passed_by_keyword(name):
    """The cached block reads its input whether the model passes it positionally (ours) or by keyword:
    `x` (LLaDA's blocks) or `hidden_states` (transformers-style decoder layers)."""
    model = tiny_llada()
    seqs, mask = trajectory(model, batch=2, prompt_len=6, resp_len=8, steps=3)
    config = CacheConfig(prompt_interval=100, response_interval=2, transfer_ratio=0.25)
    with cache_enabled(model, config):
        positional = logits_along(model, seqs, mask)
    handles = [block.register_forward_pre_hook(lambda module, args, kwargs: ((), {**kwargs, name: args[0]}), with_kwargs=True)
               for block in adapter_for(model).blocks(model)]
    try:
        with cache_enabled(model, config):
            by_keyword = logits_along(model, seqs, mask)
    finally:
        for handle in handles:
            handle.remove()
    assert max_err(positional, by_keyword) == 0.0


def test_disable_restores_instance_forwards_that_were_there_before():
    """Undo puts back whatever instance-level forward the model, a block or the LM head had before
    enable_cache (another library's wrapper, say), not just the class method."""
    model = tiny_llada()
    adapter = adapter_for(model)
    block, head = adapter.blocks(model)[0], adapter.lm_head(model)
    block_wrapper, head_wrapper = functools.partial(type(block).forward, block), functools.partial(type(head).forward, head)
    model_wrapper = functools.partial(type(model).forward, model)
    block.forward, head.forward, model.forward = block_wrapper, head_wrapper, model_wrapper
    enable_cache(model, CacheConfig())
    assert block.forward is not block_wrapper and head.forward is not head_wrapper and model.forward is not model_wrapper
    disable_cache(model)
    assert block.__dict__["forward"] is block_wrapper and head.__dict__["forward"] is head_wrapper
    assert model.__dict__["forward"] is model_wrapper
