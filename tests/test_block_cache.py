"""Block KV-cache policies (Fast-dLLM's prefix and dual cache) in the same engine: exact when
refreshed every step, what each recomputes (counts and positions), and FLOPs as it runs them."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dllm_cache.engine.patch as patch_module
from dllm_cache import CacheConfig, cache_enabled, cache_memory, cache_stats, is_cache_enabled
from dllm_cache.analysis.flops import ModelDims, _extra_flop_formulas, block_schedule, generation_cost
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import DecodeTrace, steps_per_block
from tests.helpers import max_err, trajectory

ATOL_FP32 = 1e-5
POLICIES = ("block-prefix", "block-dual")
P, R, B = 10, 16, 4  # prompt, response, block


def _blockwise(model, seqs, mask, block_of_step):
    """Logits of each step's decoded block (as our LLaDA / Dream samplers ask for them)."""
    shift = 1 if "dream" in model.config.model_type else 0
    out = []
    for seq, b in zip(seqs, block_of_step):
        lo = P + b * B - shift
        if is_cache_enabled(model):
            out.append(model(seq, attention_mask=mask, logits_to_keep=slice(lo, lo + B)).logits)
        else:
            out.append(model(seq, attention_mask=mask).logits[:, lo : lo + B])
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_refresh_every_step_reproduces_uncached_logits(model, policy):
    seqs, mask = trajectory(model, batch=3, prompt_len=P, resp_len=R, steps=6, padded=True)
    blocks = [0, 0, 1, 1, 2, 2]
    ref = _blockwise(model, seqs, mask, blocks)
    with cache_enabled(model, CacheConfig(policy=policy, block_refresh=1)):
        out = _blockwise(model, seqs, mask, blocks)
        stats = cache_stats(model)
    assert max_err(out, ref) <= ATOL_FP32
    assert stats["full_steps"] == 6 and stats["block_steps"] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_block_step_on_unchanged_tokens_equals_uncached(model, policy):
    """Right after a refresh every cached K/V is current: a block step (gathered rows, their RoPE
    positions, the padding mask, K/V written back) must give the uncached logits."""
    seqs, mask = trajectory(model, batch=3, prompt_len=P, resp_len=R, steps=2, padded=True)
    same = [seqs[1]] * 4
    ref = _blockwise(model, same, mask, [1] * 4)
    with cache_enabled(model, CacheConfig(policy=policy)):
        out = _blockwise(model, same, mask, [1] * 4)
        stats = cache_stats(model)
    assert stats["full_steps"] == 1 and stats["block_steps"] == 3
    assert max_err(out, ref) <= ATOL_FP32


@pytest.mark.parametrize("policy", POLICIES)
def test_block_steps_reuse_stale_kv(policy):
    """Tokens change inside the block: the rows outside it keep the K/V of the last refresh, so the
    logits move away from uncached (the cache is really reused), yet stay finite."""
    model = tiny_llada()
    seqs, mask = trajectory(model, batch=2, prompt_len=P, resp_len=R, steps=2, padded=False)
    x = seqs[1].clone()
    x[:, P + B : P + 2 * B] = 7  # the whole block decoded since the refresh
    ref = _blockwise(model, [seqs[1], x], mask, [1, 1])
    with cache_enabled(model, CacheConfig(policy=policy)):
        out = _blockwise(model, [seqs[1], x], mask, [1, 1])
        first = patch_module._state(model).branch().layers[0]
    with cache_enabled(model, CacheConfig(policy=policy, block_refresh=1)):
        _blockwise(model, [seqs[1], x], mask, [1, 1])
        fresh = patch_module._state(model).branch().layers[0]
    assert max_err(out[:1], ref[:1]) <= ATOL_FP32
    assert max_err(out[1:], ref[1:]) > 1e-4 and torch.isfinite(out[1]).all()
    # layer 0 sees embeddings only: the recomputed rows' K/V written back are the fresh ones
    lo, hi = P + B, P + 2 * B if policy == "block-dual" else P + R
    first, fresh = first.kv, fresh.kv
    assert max_err([first.k[:, :, lo:hi], first.v[:, :, lo:hi]], [fresh.k[:, :, lo:hi], fresh.v[:, :, lo:hi]]) <= 1e-6


def _recorded_rows(monkeypatch):
    rows = []
    real = patch_module.block_rows_forward

    def recording(parts, dims, store, ctx, x):
        rows.append(ctx.rows_index.tolist())
        return real(parts, dims, store, ctx, x)

    monkeypatch.setattr(patch_module, "block_rows_forward", recording)
    return rows


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_what_each_policy_recomputes(monkeypatch, policy, factory):
    """Fixed schedule, 4 blocks of 4 tokens, 2 steps per block: each block starts with a full
    refresh; its second step recomputes the block (dual; on Dream also the row predicting its first
    token) or the block and everything after it (prefix), in every layer."""
    model = factory()
    shift = 1 if factory is tiny_dream else 0
    rows = _recorded_rows(monkeypatch)
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    with cache_enabled(model, CacheConfig(policy=policy)):
        generate(model, ids, gen_length=R, steps=8, block_length=B)
        stats = cache_stats(model)
        memory = cache_memory(model)
    n_layers = model.config.num_hidden_layers if shift else model.config.n_layers
    assert stats["full_steps"] == 4 and stats["block_steps"] == 4
    assert len(rows) == 4 * n_layers
    L = P + R
    for b in range(4):
        lo = P + b * B - shift
        expected = list(range(lo, L)) if policy == "block-prefix" else list(range(lo, P + (b + 1) * B))
        assert rows[b * n_layers : (b + 1) * n_layers] == [expected] * n_layers, b
    counted = sum(len(r) - (r[0] < P) for r in rows[::n_layers])  # response rows recomputed per step
    assert stats["tokens_recomputed"] == 2 * n_layers * counted
    assert stats["tokens_total"] == 2 * n_layers * R * 4
    assert memory["response_deltas"] == 0 and memory["prompt_deltas"] == 0  # K/V only


def _padded_prompts(model):
    """3 prompts of P tokens (ids (3, P), mask (3, P)); row 0 left-padded by 3."""
    ids = torch.randint(0, 200, (3, P), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids[0, :3] = model.config.pad_token_id
    return ids, mask


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
@pytest.mark.parametrize("sampler", [dict(), dict(threshold=0.05), dict(factor=3.0)], ids=["fixed", "thr", "factor"])
def test_sampler_refreshed_every_step_equals_uncached(policy, factory, sampler):
    model = factory()
    ids, mask = _padded_prompts(model)
    ref = generate(model, ids, mask, gen_length=R, steps=R, block_length=B, **sampler)
    with cache_enabled(model, CacheConfig(policy=policy, block_refresh=1)):
        out = generate(model, ids, mask, gen_length=R, steps=R, block_length=B, **sampler)
    assert torch.equal(out, ref)


def _measured_flops(model, **kw):
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(1))
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with counter:
        generate(model, ids, gen_length=R, block_length=B, **kw)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "factory", [tiny_llada, tiny_dream, lambda: tiny_llada(weight_tying=True)], ids=["llada", "dream", "tied"]
)
def test_flops_count_the_policy_as_the_engine_runs_it(policy, factory):
    """The whole generation under FlopCounterMode equals the analytic count: fixed schedule with
    a refresh every 3 steps, and parallel decoding through its recorded steps per block."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    tied = getattr(model.config, "weight_tying", False)
    head = P + R if tied else None  # no head module to patch: logits on every row
    config = CacheConfig(policy=policy, block_refresh=3)
    with cache_enabled(model, config):
        measured = _measured_flops(model, steps=R)
        assert measured == generation_cost(dims, 2, P, R, R, config, B, logits_tokens=head).flops
        trace = DecodeTrace()
        measured = _measured_flops(model, steps=R, threshold=0.05, trace=trace)
    per_block = steps_per_block(trace.rows(), R // B)
    assert sum(per_block) < R
    cost = generation_cost(dims, 2, P, R, R, config, B, logits_tokens=head, steps_per_block=per_block)
    assert measured == cost.flops
    assert cost.step_counts["full"] == 4 + sum((n - 1) // 3 for n in per_block)
    # the dual cache does less than the prefix cache, both less than uncached
    uncached = generation_cost(dims, 2, P, R, R, None, B).flops
    assert generation_cost(dims, 2, P, R, R, config, B).flops < uncached


def test_block_schedule_kinds_and_rows():
    llada = block_schedule(CacheConfig(policy="block-dual", block_refresh=2), P, R, B, [3, 1, 2, 2])
    assert [k for k, _, _ in llada] == ["full", "block", "full", "full", "full", "block", "full", "block"]
    assert {rows for _, rows, _ in llada if rows} == {B}
    prefix = block_schedule(CacheConfig(policy="block-prefix"), P, R, B, [2, 2, 2, 2], logit_shift=1)
    assert [rows for _, rows, _ in prefix if rows] == [R + 1, R - B + 1, R - 2 * B + 1, B + 1]


def test_config_keeps_the_two_families_apart():
    # a feature-cache field away from its default is refused on a block policy, whatever the default is
    other = "paper" if CacheConfig().selection != "paper" else "frontier"
    with pytest.raises(ValueError, match="selection choose .* do not apply to policy='block-dual'"):
        CacheConfig(policy="block-dual", selection=other)
    with pytest.raises(ValueError, match="frontier_only choose .* do not apply to policy='block-prefix'"):
        CacheConfig(policy="block-prefix", frontier_only=True)
    with pytest.raises(ValueError, match="block policies only"):
        CacheConfig(block_refresh=2)
    with pytest.raises(ValueError, match="policy must be one of"):
        CacheConfig(policy="dual")
    with pytest.raises(ValueError, match="block_refresh must be an integer"):
        CacheConfig(policy="block-dual", block_refresh=0)


# ----------------------------------------------------------------------------- block_start="incremental"
INCREMENTAL = {policy: CacheConfig(policy=policy, block_start="incremental") for policy in POLICIES}


@pytest.mark.parametrize("policy", POLICIES)
def test_incremental_full_every_step_reproduces_uncached_logits(model, policy):
    """prompt_interval=1: every step is a full forward, so the logits are the uncached model's."""
    seqs, mask = trajectory(model, batch=3, prompt_len=P, resp_len=R, steps=6, padded=True)
    blocks = [0, 0, 1, 1, 2, 2]
    ref = _blockwise(model, seqs, mask, blocks)
    with cache_enabled(model, CacheConfig(policy=policy, block_start="incremental", prompt_interval=1)):
        out = _blockwise(model, seqs, mask, blocks)
        stats = cache_stats(model)
    assert max_err(out, ref) <= ATOL_FP32
    assert stats["full_steps"] == 6 and stats["block_steps"] == 0


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
@pytest.mark.parametrize("sampler", [dict(), dict(threshold=0.05)], ids=["fixed", "thr"])
def test_incremental_sampler_full_every_step_equals_uncached(policy, factory, sampler):
    """Our samplers, batch 3 with left padding: prompt_interval=1 gives the uncached tokens; the default
    Kp (100, past the 16 steps) runs block steps after step 0 and still decodes (a different answer is allowed)."""
    model = factory()
    ids, mask = _padded_prompts(model)
    ref = generate(model, ids, mask, gen_length=R, steps=R, block_length=B, **sampler)
    with cache_enabled(model, CacheConfig(policy=policy, block_start="incremental", prompt_interval=1)):
        out = generate(model, ids, mask, gen_length=R, steps=R, block_length=B, **sampler)
    assert torch.equal(out, ref)
    with cache_enabled(model, INCREMENTAL[policy]):
        lazy = generate(model, ids, mask, gen_length=R, steps=R, block_length=B, **sampler)
        stats = cache_stats(model)
    assert stats["full_steps"] == 1 and stats["block_steps"] == stats["steps"] - 1
    assert lazy.shape == ref.shape and (lazy[:, P:] != model.config.mask_token_id).all()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_what_an_incremental_block_start_recomputes(monkeypatch, policy, factory):
    """4 blocks of 4 tokens, 2 steps per block, Kp 100: step 0 is the only full step; each later block's
    first step recomputes the previous block and its own region together, its second step its region."""
    model = factory()
    shift = 1 if factory is tiny_dream else 0
    rows = _recorded_rows(monkeypatch)
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    with cache_enabled(model, INCREMENTAL[policy]):
        generate(model, ids, gen_length=R, steps=8, block_length=B)
        stats = cache_stats(model)
    n_layers = model.config.num_hidden_layers if shift else model.config.n_layers
    assert stats["full_steps"] == 1 and stats["block_steps"] == 7
    assert len(rows) == 7 * n_layers
    L = P + R
    expected = []
    for b in range(4):
        lo = P + b * B - shift
        hi = L if policy == "block-prefix" else P + (b + 1) * B
        if b:  # the block start: the previous block's first row onwards
            expected.append(list(range(lo - B, hi)))
        expected.append(list(range(lo, hi)))
    assert rows[::n_layers] == expected
    assert all(rows[i * n_layers : (i + 1) * n_layers] == [r] * n_layers for i, r in enumerate(expected))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_flops_count_incremental_as_the_engine_runs_it(policy, factory):
    """FlopCounterMode over whole generations equals generation_cost: fixed schedule and parallel
    decoding, with a full forward every 5 steps (one mid-block, one on a block start)."""
    model = factory()
    dims = ModelDims.from_config(model.config)
    config = CacheConfig(policy=policy, block_start="incremental", prompt_interval=5)
    with cache_enabled(model, config):
        measured = _measured_flops(model, steps=R)
        cost = generation_cost(dims, 2, P, R, R, config, B)
        assert measured == cost.flops
        assert cost.step_counts["full"] == 4  # steps 0, 5, 10, 15
        trace = DecodeTrace()
        measured = _measured_flops(model, steps=R, threshold=0.05, trace=trace)
    per_block = steps_per_block(trace.rows(), R // B)
    assert measured == generation_cost(dims, 2, P, R, R, config, B, steps_per_block=per_block).flops
    # at the default Kp (one full forward here) it does less than Fast-dLLM's full forward per block
    lazy = generation_cost(dims, 2, P, R, R, INCREMENTAL[policy], B)
    assert lazy.step_counts["full"] == 1
    assert lazy.flops < generation_cost(dims, 2, P, R, R, CacheConfig(policy=policy), B).flops


def test_incremental_block_schedule():
    dual = block_schedule(INCREMENTAL["block-dual"], P, R, B, [2, 2, 2, 2])
    assert [k for k, _, _ in dual] == ["full"] + ["block"] * 7
    assert [rows for _, rows, _ in dual] == [None, B, 2 * B, B, 2 * B, B, 2 * B, B]
    kp3 = block_schedule(CacheConfig(policy="block-prefix", block_start="incremental", prompt_interval=3), P, R, B,
                         [2, 2, 2, 2], logit_shift=1)
    assert [k for k, _, _ in kp3] == ["full", "block", "block", "full", "block", "block", "full", "block"]
    assert [rows for _, rows, _ in kp3] == [None, R + 1, R + 1, None, R - B + 1, R - 2 * B + 1, None, B + 1]


def test_block_index_per_region_size():
    """Graph replay reads a persistent index per region size: an incremental generation alternates a
    block start's size and a block step's without dropping captured graphs; a third size drops them."""
    from dllm_cache.engine.state import BranchState
    from dllm_cache.engine.step import _persist_block_index

    branch = BranchState(response_interval=8)
    _persist_block_index(branch, (10, 18), "cpu")
    start = branch.block_index
    _persist_block_index(branch, (14, 18), "cpu")
    step = branch.block_index
    branch.graphs["captured"] = object()
    _persist_block_index(branch, (14, 22), "cpu")
    assert branch.block_index is start and start.tolist() == list(range(14, 22))
    _persist_block_index(branch, (18, 22), "cpu")
    assert branch.block_index is step and step.tolist() == list(range(18, 22))
    assert "captured" in branch.graphs
    _persist_block_index(branch, (18, 20), "cpu")
    assert not branch.graphs and list(branch.block_indexes) == [2]


def test_config_block_start():
    assert CacheConfig(policy="block-dual").block_start == "full"  # Fast-dLLM's behaviour stays the default
    with pytest.raises(ValueError, match="block_start must be one of"):
        CacheConfig(policy="block-dual", block_start="lazy")
    with pytest.raises(ValueError, match="block_start='incremental' applies to the block policies only"):
        CacheConfig(block_start="incremental")
    with pytest.raises(ValueError, match="cannot be combined with block_start='incremental'"):
        CacheConfig(policy="block-dual", block_start="incremental", block_refresh=2)


def test_bench_runs_the_incremental_policies(tmp_path):
    """`dllm-cache bench --policy block-dual-incremental ...`: one full step per generation (Kp 100 > 16
    steps), block steps after it, fewer FLOPs than Fast-dLLM's dual cache (a full forward per block)."""
    import json

    from dllm_cache.bench.cli import main

    args = ["--shape", "tiny-llada", "--batch-size", "1", "--prompt-len", "16", "--gen-len", "16", "--steps", "16",
            "--block-length", "8", "--repeats", "1",
            "--warmup-steps", "2", "--no-progress", "--max-steps", "10", "--out-dir", str(tmp_path), "--tag", "inc",
            "--policy", "block-dual", "block-dual-incremental", "block-prefix-incremental"]
    assert main(args) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "inc.json").read_text())["results"]}
    for name in ("block-dual-incremental", "block-prefix-incremental"):
        assert rows[name]["step_counts"]["full"] == 1 and rows[name]["cache_stats"]["block_steps"] == 15
    assert rows["block-dual-incremental"]["flops"] < rows["block-dual"]["flops"]
