"""LLaDA 2.x (llada2_moe): the model class, its block-causal attention, the official sampler, and the cache.

Tiny random models (a dense first layer, then group-routed MoE layers), fp32 on CPU. The sampler is checked
against a literal reference loop (tests/reference_llada2.py); the cache against the uncached sampler.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

import dllm_cache
from dllm_cache import CacheConfig, DecodeTrace, ReplaySchedule, cache_enabled, enable_cache, generate
from dllm_cache.models import LLaDA2MoeConfig, LLaDA2MoeModelLM
from dllm_cache.models.tiny import TINY_VOCAB, tiny_llada2
from tests.helpers import torch_threads
from tests.reference_llada2 import joint_threshold_reference, llada2_reference

MASK = TINY_VOCAB - 1
EXACT = (CacheConfig(policy="block-dual"), CacheConfig(response_interval=1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread (a second one only adds contention on a shared CI machine)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model() -> LLaDA2MoeModelLM:
    return tiny_llada2(seed=0)


def _frequent_token(model, prompt: torch.Tensor, gen_length: int, block_length: int) -> int:
    """A token the greedy decode produces (used as the end token, so eos paths are exercised)."""
    out = generate(model, prompt, gen_length=gen_length, block_length=block_length, steps=block_length, eos_id=[])
    return int(out[0, prompt.shape[1] + 5])


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), P, dtype=torch.long)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):], mask[i, P - len(r):] = r, 1
    return ids, mask


# ------------------------------------------------------------------ the model
def test_block_causal_attention(model):
    """A block's rows see their own and earlier blocks only: changing block 2 leaves blocks 0-1 unchanged and
    moves block 2; block_length= builds the official 4-D mask."""
    torch.manual_seed(0)
    ids = torch.randint(0, 250, (2, 24))
    logits = model(ids, block_length=8).logits
    other = ids.clone()
    other[:, 16:] = torch.randint(0, 250, (2, 8))
    changed = model(other, block_length=8).logits
    # (equal up to float rounding: an expert's matmul over a different set of tokens may round differently)
    assert torch.allclose(logits[:, :16], changed[:, :16], atol=1e-5)
    assert not torch.allclose(logits[:, 16:], changed[:, 16:], atol=1e-2)
    tri = torch.tril(torch.ones(3, 3)).repeat_interleave(8, 0).repeat_interleave(8, 1)[None, None]
    assert torch.allclose(model(ids, attention_mask=tri.log()).logits, logits, atol=1e-5)
    bidirectional = model(ids).logits  # no mask: every row sees every block
    assert not torch.allclose(bidirectional[:, :8], logits[:, :8], atol=1e-2)


def test_official_config_folder_loads_without_remote_code(tmp_path):
    """A folder with an official-format config.json (model_type llada2_moe, no auto_map, no mask_token_id) and
    our weights loads through the Auto classes; the mask id defaults to LLaDA 2.x's 156895."""
    src = tiny_llada2(seed=1)
    src.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("mask_token_id", "transformers_version", "dtype", "torch_dtype"):
        config.pop(key, None)
    config.update(model_type="llada2_moe", architectures=["LLaDA2MoeModelLM"], score_function="sigmoid",
                  moe_router_enable_expert_bias=True, use_qk_norm=True, norm_topk_prob=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded_config, LLaDA2MoeConfig) and loaded_config.mask_token_id == 156895
    for auto in (AutoModel, AutoModelForMaskedLM):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is LLaDA2MoeModelLM
        ids = torch.randint(0, 250, (1, 16))
        assert torch.allclose(loaded(ids, block_length=8).logits, src(ids, block_length=8).logits, atol=1e-6)
    # ... and generates with the cache on (the tiny vocabulary's own mask id: 156895 is outside it)
    kw = dict(gen_length=16, block_length=8, mask_id=MASK, eos_id=[])
    plain = generate(loaded, ids, **kw)
    with cache_enabled(loaded, CacheConfig(policy="block-dual")):
        assert torch.equal(generate(loaded, ids, **kw), plain) and not (plain == MASK).any()


def test_config_refuses_what_it_would_compute_differently():
    with pytest.raises(ValueError, match="score_function"):
        LLaDA2MoeConfig(score_function="softmax")
    with pytest.raises(ValueError, match="n_group"):
        LLaDA2MoeConfig(num_experts=8, n_group=3)


# ------------------------------------------------------------------ the sampler
@pytest.mark.parametrize("threshold", [0.95, 0.3, None])
def test_sampler_equals_reference_loop(model, threshold):
    """Batch of 2 prompts (one not a multiple of the block, so the first block holds the prompt's tail), each row
    equal to the literal one-prompt loop: tokens up to and including the first end token."""
    torch.manual_seed(1)
    prompts = torch.randint(0, 250, (2, 11))
    eos = _frequent_token(model, prompts[:1], 24, 8)
    out = generate(model, prompts, gen_length=24, block_length=8, steps=4, threshold=threshold, eos_id=eos)
    for row in range(2):
        ref = llada2_reference(model, prompts[row], gen_length=24, block_length=8, steps=4, threshold=threshold,
                               eos_id=eos, mask_id=MASK)
        ours = out[row, 11:]
        assert torch.equal(ours[: len(ref)], ref)
        assert (ours[len(ref):] == eos).all()  # after the first end token: end tokens


def test_sampler_eos_early_stop_and_editing_equal_reference(model):
    torch.manual_seed(2)
    prompt = torch.randint(0, 250, (1, 9))
    eos = _frequent_token(model, prompt, 24, 8)
    out = generate(model, prompt, gen_length=24, block_length=8, steps=8, stop_at_eos=True, eos_id=eos)
    ref = llada2_reference(model, prompt[0], gen_length=24, block_length=8, steps=8, eos_early_stop=True,
                           eos_id=eos, mask_id=MASK)
    assert torch.equal(out[0, 9:9 + len(ref)], ref) and len(ref) < 24
    kw = dict(gen_length=16, block_length=8, threshold=0.9)
    edited = generate(model, prompt, **kw, edit_threshold=0.02, max_post_edit_steps=2, eos_id=[])
    ref = joint_threshold_reference(model, prompt[0], **kw, edit_threshold=0.02, max_post_edit_steps=2, mask_id=MASK)
    assert torch.equal(edited[0, 9:], ref)
    plain = generate(model, prompt, **kw, eos_id=[])
    assert not torch.equal(edited, plain)  # edits happened (else this test could not tell editing from none)


def test_sampler_options_are_checked(model):
    ids = torch.randint(0, 250, (1, 8))
    with pytest.raises(ValueError, match="option of the llada sampler"):
        generate(model, ids, gen_length=8, cfg_scale=1.5)
    with pytest.raises(ValueError, match="unknown option 'treshold'.*Did you mean 'threshold'"):
        generate(model, ids, gen_length=8, treshold=0.9)
    with pytest.raises(ValueError, match="edit_threshold.*temperature"):
        generate(model, ids, gen_length=8, edit_threshold=0.5, temperature=0.7)
    with pytest.raises(ValueError, match="stop_at_eos.*token editing"):
        generate(model, ids, gen_length=8, edit_threshold=0.5, stop_at_eos=True)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        generate(model, ids, gen_length=8, steps=0)
    with pytest.raises(ValueError, match="threshold must be a number in"):
        generate(model, ids, gen_length=8, threshold=1.5)
    schedule = ReplaySchedule([{"blocks": [[8]], "stopped": False}], gen_length=8, block_length=8)
    with pytest.raises(ValueError, match="fill whole blocks"):
        generate(model, torch.randint(0, 250, (1, 5)), gen_length=8, block_length=8, schedule=schedule)


def test_trace_replays_to_the_same_tokens(model):
    """A recorded trace replayed as a schedule takes the same steps and, greedy, gives the same tokens."""
    ids = torch.randint(0, 250, (2, 8))
    trace = DecodeTrace()
    out = generate(model, ids, gen_length=16, block_length=8, threshold=0.2, eos_id=[], trace=trace)
    rows = trace.rows()
    replay = generate(model, ids, gen_length=16, block_length=8, schedule=ReplaySchedule(rows, 16, 8), eos_id=[])
    assert torch.equal(replay, out)
    assert sum(len(b) for b in rows[0]["blocks"]) < 16  # parallel decoding: fewer steps than tokens


# ------------------------------------------------------------------ the cache
@pytest.mark.parametrize("config", EXACT, ids=["block-cache", "feature-refresh-every-step"])
def test_exact_block_cache_equals_uncached_with_padding(model, config):
    """Left-padded batch of 3 (a prompt shorter than a block, one whose padding fills a whole block), threshold
    decoding and an end token: the cached tokens equal the uncached ones."""
    torch.manual_seed(3)
    ids, mask = _padded([torch.randint(0, 250, (n,)) for n in (19, 3, 10)])
    eos = _frequent_token(model, ids[:1], 24, 8)
    kw = dict(gen_length=24, block_length=8, steps=8, threshold=0.4, eos_id=eos)
    plain = generate(model, ids, mask, **kw)
    with cache_enabled(model, config):
        cached = generate(model, ids, mask, **kw)
        stats = dllm_cache.cache_stats(model)
    assert torch.equal(cached, plain)
    assert stats["steps"] > 0 and stats["recompute_fraction"] == 1.0


def test_padding_by_whole_blocks_equals_the_row_alone(model):
    torch.manual_seed(4)
    short, long = torch.randint(0, 250, (6,)), torch.randint(0, 250, (14,))
    ids, mask = _padded([short, long])  # the short row is padded by 8 = one block
    for config in (None, EXACT[0]):
        with cache_enabled(model, config) if config else torch.no_grad():
            batch = generate(model, ids, mask, gen_length=16, block_length=8, eos_id=[])
            alone = generate(model, short[None], gen_length=16, block_length=8, eos_id=[])
        assert torch.equal(batch[0, 14:], alone[0, 6:])


def test_feature_cache_inside_the_block(model):
    """Default feature cache: recomputes part of the block on most steps, decodes every token; token editing and
    transfer_ratio 1 with refresh every step stay exact."""
    torch.manual_seed(5)
    ids = torch.randint(0, 250, (2, 16))
    with cache_enabled(model, CacheConfig()):
        out = generate(model, ids, gen_length=32, block_length=16, steps=16, threshold=None, eos_id=[])
        stats = dllm_cache.cache_stats(model)
    assert not (out == MASK).any()
    assert stats["partial_steps"] > 0 and stats["recompute_fraction"] < 1
    kw = dict(gen_length=16, block_length=8, threshold=0.9, edit_threshold=0.02, max_post_edit_steps=2, eos_id=[])
    plain = generate(model, ids, **kw)
    with cache_enabled(model, CacheConfig(response_interval=1)):
        assert torch.equal(generate(model, ids, **kw), plain)


def test_fused_qkv_runs_only_the_rows_a_step_reads():
    """The adapter's q/k/v of the fused query_key_value equal the fused projection split (biases, QK norms);
    a partial step's drift test (V of every block row) runs the V rows alone, its selected rows (K, then Q)
    the Q and K rows in one matmul, a refresh (Q, K, V of the same rows) one whole matmul. A projection that is
    not a plain Linear is run whole and sliced."""
    from torch.utils.flop_counter import FlopCounterMode

    from dllm_cache.hooks.llada2 import LLaDA2Adapter

    model = tiny_llada2(seed=1, use_qkv_bias=True)
    attn, d = model.model.layers[1].attention, model.config.hidden_size
    hd, nq, nkv = attn.head_dim, attn.n_heads, attn.n_kv_heads
    h, hs = torch.randn(2, 8, d), torch.randn(2, 3, d)

    def reference(x):  # (Q, K, V) as the model computes them: the whole fused matmul, split, QK norms per head
        q, k, v = attn.query_key_value(x).unflatten(-1, (-1, hd)).split([nq, nkv, nkv], dim=2)
        return attn.query_layernorm(q).flatten(2), attn.key_layernorm(k).flatten(2), v.flatten(2)

    def run(parts, calls):  # the calls' outputs and the matmul FLOPs they took
        with FlopCounterMode(display=False) as counter:
            outs = [getattr(parts, f"{name}_proj")(x) for name, x in calls]
        return outs, counter.get_total_flops()

    per_row = {name: 2 * d * width * hd for name, width in (("q", nq), ("k", nkv), ("v", nkv))}
    for wrapped in (False, True):
        if wrapped:
            attn.query_key_value = torch.nn.Sequential(attn.query_key_value)
        parts = LLaDA2Adapter().parts(model.model.layers[1])
        (v,), cost_v = run(parts, [("v", h)])
        (k, q), cost_kq = run(parts, [("k", hs), ("q", hs)])
        (q2, k2, v2), cost_qkv = run(parts, [("q", h), ("k", h), ("v", h)])
        ref_h, ref_s = reference(h), reference(hs)
        for got, want in ((v, ref_h[2]), (k, ref_s[1]), (q, ref_s[0]), (q2, ref_h[0]), (k2, ref_h[1]), (v2, ref_h[2])):
            assert torch.allclose(got, want, atol=1e-6)
        whole = 16 * sum(per_row.values())  # the whole fused matmul over h's 16 rows
        assert cost_qkv == whole
        if not wrapped:
            assert (cost_v, cost_kq) == (16 * per_row["v"], 6 * (per_row["q"] + per_row["k"]))
        else:
            assert (cost_v, cost_kq) == (whole, 6 * sum(per_row.values()))


def test_cached_generation_checks_that_its_cache_fits(model, monkeypatch):
    """Building the block-causal cache runs the memory fit check (as the feature cache's step 0 does): a device
    with too little free memory raises NotEnoughMemoryError naming the largest batch that fits, before a step."""
    from dllm_cache.analysis import memory
    from dllm_cache.analysis.flops import ModelDims

    dims = ModelDims.from_config(model.config)
    P, gen, B = 6, 18, 8  # 24 columns, 3 blocks

    def need(b):  # what the check counts for batch b: the cache, and a step over the prompt or a block
        return (memory.estimate_block_causal_cache_bytes(dims, b, P, gen, B, dtype_bytes=4)["total"]
                + memory.estimate_step_bytes(dims, b, max(P, B), B, 4))

    ids = torch.randint(0, 250, (3, P))
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: need(2))
    with cache_enabled(model, CacheConfig()):
        with pytest.raises(memory.NotEnoughMemoryError, match=r"batch 3 \(prompt 6 \+ gen 18, blocks of 8\).*largest "
                           "batch that fits is 2"):
            generate(model, ids, gen_length=gen, block_length=B, steps=4)
        monkeypatch.setattr(memory, "device_free_bytes", lambda device: need(3))  # just enough: it runs
        out = generate(model, ids, gen_length=gen, block_length=B, steps=4)
    assert out.shape == (3, P + gen) and not (out == MASK).any()


def test_enable_cache_patches_nothing_and_undoes(model):
    ids = torch.randint(0, 250, (1, 16))
    before = model(ids, block_length=8).logits
    enable_cache(model)
    assert dllm_cache.is_cache_enabled(model)
    assert torch.equal(model(ids, block_length=8).logits, before)  # a plain forward stays the exact one
    dllm_cache.disable_cache(model)
    assert "forward" not in model.__dict__ and not dllm_cache.is_cache_enabled(model)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        enable_cache(model, CacheConfig(kv_cache_dtype="fp8"))


# ------------------------------------------------------------------ lm-eval
def test_lm_eval_generate_until(tmp_path):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from dllm_cache.integrations.lm_eval.model import DLLMCacheLM
    from tests.helpers import byte_tokenizer

    tokenizer = byte_tokenizer()
    tiny_llada2(seed=0, vocab_size=260, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = DLLMCacheLM(pretrained=str(tmp_path), device="cpu", batch_size="2", gen_length="16", steps="8",
                     block_length="8", cache="on")
    assert lm.family == "llada2"
    assert lm.sampler_options["steps"] == 4  # steps=8 over the answer's two blocks: 4 per block, as its sampler counts
    reqs = [SimpleNamespace(args=("a prompt", {"until": ["\n"]})), SimpleNamespace(args=("another one", {"until": []}))]
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert lm.generate_until([reqs[1]], disable_tqdm=True)[0] == out[1]
    # Scoring attends block-causally, as LLaDA 2.x decodes: the first block's logits ignore later blocks.
    x = torch.randint(0, 250, (1, 16))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 250
    assert torch.allclose(lm._logits(x, 4)[:, :8], lm._logits(y, 4)[:, :8], atol=1e-5)
    ll = lm.loglikelihood([SimpleNamespace(args=("a prompt", " and more"))], disable_tqdm=True)
    assert len(ll) == 1 and math.isfinite(ll[0][0])


def test_steps_over_the_answer_become_steps_per_block():
    """One conversion for the CLI, the server and lm-eval (they take steps over the answer, the sampler per block)."""
    from dllm_cache.sampling.llada2 import steps_per_block

    assert steps_per_block(256, 256, 32) == 32  # one token per step
    assert steps_per_block(64, 256, 32) == 8
    assert steps_per_block(10, 64, 32) == 5
    assert steps_per_block(9, 64, 32) == 5  # rounded up: never fewer steps than asked
    assert steps_per_block(1, 256, 32) == 1
    assert steps_per_block(8, 40, 32) == 4  # a partial last block counts as a block
