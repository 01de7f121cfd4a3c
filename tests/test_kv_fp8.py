"""The opt-in fp8 K/V store (CacheConfig(kv_cache_dtype="fp8")): quantization bounds, the store's
reads and writes, its bytes, its deviation from the uncached model, and the paths it runs on.

Tolerance of the logit tests, measured on these tiny models at init std 0.02 (the factories'
default 0.15 makes a chaotic network where bf16 rounding alone moves the logits 2.5%): with
every step refreshed, fp8 K/V move the logits of response rows by at most 1.6-2.5% of the
largest |logit| (LLaDA, Dream, LLaDA-MoE, MMaDA; running the whole model in bf16 instead moves
them 0.7%). e4m3 keeps 3 mantissa bits, so each K/V value is off by at most 1/16 of itself.
The bound, 4%, fails for a dequantization 10% off (7-11%) and for a skipped scale (130-160%);
per-tensor instead of per-token scales are caught by the round-trip test, not by these models.
"""

import pytest
import torch

import dllm_cache.analysis.memory as memory
from dllm_cache import CacheConfig, cache_enabled, cache_memory, measure_drift, reset_cache
from dllm_cache.analysis.flops import ModelDims
from dllm_cache.engine.kv_store import FP8_DTYPE, ExactKV, Fp8KV, dequantize, dequantize_into, quantize
from dllm_cache.engine.patch import _state
from dllm_cache.hooks import sampler_of
from dllm_cache.models.tiny import llada_8b_config, tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from tests.conftest import FACTORIES
from tests.test_graph_protocol import stand_in_graphs  # noqa: F401  (fixture)
from tests.trajectory import logit_deviation, step_logits, trajectory

FP8 = "fp8"
MAX_REL = 0.04  # see the module docstring
MIN_ARGMAX = 0.9  # random tiny models have near-ties among their logits
P, R = 10, 16


# ----------------------------------------------------------------------------- quantization


def test_round_trip_error_is_bounded_per_row():
    """Rows 1e-3 .. 1e3 apart: each is quantized against its own absmax, so every value is off by
    at most 1/16 of itself (3 mantissa bits) plus half of fp8's smallest step at that row's scale."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 64, generator=g) * torch.logspace(-3, 3, 5)[None, None, :, None]
    q, scale = quantize(x)
    assert q.dtype == FP8_DTYPE and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (2, 3, 5, 1)
    y = dequantize(q, scale, torch.float32)
    assert ((y - x).abs() <= x.abs() / 16 + scale * 2**-10 + 1e-12).all()
    row_err = ((y - x).abs().amax(-1) / x.abs().amax(-1)).max().item()
    assert row_err <= 1 / 28  # 16 / 448: half a step of fp8's top binade
    assert torch.allclose(y.abs().amax(-1), x.abs().amax(-1), rtol=1e-6)  # absmax maps to 448 exactly


def test_zero_rows_and_dtypes():
    x = torch.zeros(1, 2, 3, 8, dtype=torch.bfloat16)
    x[0, 1, 2] = torch.linspace(-2, 2, 8)
    q, scale = quantize(x)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    y = dequantize(q, scale, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert (y[0, 0] == 0).all() and (y[0, 1, :2] == 0).all()
    assert (y[0, 1, 2] - x[0, 1, 2]).abs().max() <= 2 / 16
    for dtype in (torch.float32, torch.bfloat16):  # the in-place load equals the out-of-place dequantize
        out = torch.empty_like(x, dtype=dtype)
        dequantize_into(out, q, scale)
        assert torch.equal(out, dequantize(q, scale, dtype))


def test_fp8_store_reads_what_it_wrote():
    """Every write path (rows from a start, a (n,) index, a (batch, n) index): the store holds
    quantize(x), the shared workspace its dequantized values, and load() rebuilds the same."""
    shape = (2, 3, 12, 8)
    ws = ExactKV.empty(shape, torch.bfloat16, torch.device("cpu"))
    kv = Fp8KV.empty(shape, ws)
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(shape, generator=g).bfloat16(), torch.randn(shape, generator=g).bfloat16()
    kv.write(0, k=k, v=v)
    k2 = torch.randn(2, 3, 4, 8, generator=g).bfloat16()
    kv.write(8, k=k2)  # rows 8..11
    idx = torch.tensor([1, 5])
    k3 = torch.randn(2, 3, 2, 8, generator=g).bfloat16()
    kv.write(0, k=k3, index=idx)
    sel = torch.tensor([[0, 2], [3, 1]])
    v4 = torch.randn(2, 3, 2, 8, generator=g).bfloat16()
    kv.write(4, v=v4, index=sel)  # rows 4 + sel[b]
    want_k, want_v = k.clone(), v.clone()
    want_k[:, :, 8:] = k2
    want_k[:, :, idx] = k3
    for b in range(2):
        want_v[b, :, 4 + sel[b]] = v4[b]
    for got, want in ((kv.k, want_k), (kv.v, want_v)):
        assert torch.equal(got, dequantize(*quantize(want), torch.bfloat16))
    written = kv.k.clone(), kv.v.clone()
    ws.k.zero_()
    ws.v.zero_()
    kv.load()
    assert torch.equal(kv.k, written[0]) and torch.equal(kv.v, written[1])
    assert kv.tensors()["k"].dtype == FP8_DTYPE and kv.tensors()["k_scale"].shape == (2, 3, 12, 1)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ["int8", "FP8", torch.float8_e4m3fn, 8, "bf16"])
def test_unknown_kv_cache_dtype_is_refused(value):
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \(None, 'fp8'\).*leave it None"):
        CacheConfig(kv_cache_dtype=value)


def test_default_store_is_exact_and_has_no_workspace():
    model = tiny_llada()
    ids = torch.randint(0, 200, (2, P))
    with cache_enabled(model, CacheConfig()):
        generate(model, ids, gen_length=R, steps=R, block_length=8)
        branch = _state(model).branch()
        held = cache_memory(model)
    assert all(isinstance(s.kv, ExactKV) for s in branch.layers)
    assert branch.kv_workspaces == {} and held["kv_workspace"] == 0


# ----------------------------------------------------------------------------- deviation


@pytest.fixture
def calm_model(family):
    """The family's tiny model at init std 0.02 (see the module docstring)."""
    return FACTORIES[family](std=0.02).eval()


@pytest.mark.parametrize("every", [dict(prompt_interval=1, response_interval=1),
                                   dict(prompt_interval=1, response_interval=8, transfer_ratio=1.0)],
                         ids=["kp1_kr1", "kp1_ratio1"])
def test_refresh_every_step_is_close_to_uncached(calm_model, every):
    """Nothing stale (the exact cache equals uncached here): what remains is fp8's rounding of K/V.
    kp1_ratio1 goes through V-verify's writes (all response V, every selected K)."""
    seqs, mask = trajectory(calm_model, 3, P, R, 6)
    shift = 1 if sampler_of(calm_model) == "dream" else 0
    ref = step_logits(calm_model, seqs, mask, None, P)
    out = step_logits(calm_model, seqs, mask, CacheConfig(**every, kv_cache_dtype=FP8), P)
    d = logit_deviation(out, ref, P - shift, P + R - shift)
    assert 0 < d["max_rel"] <= MAX_REL, d  # > 0: the K/V really went through fp8
    assert d["argmax_agreement"] >= MIN_ARGMAX, d


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_default_schedule_stays_near_the_exact_cache(factory):
    """Under CacheConfig()'s schedule fp8 also changes which tokens V-verify picks, so it is
    compared with the exact cache at a looser bound (measured: relative 0.12-0.32, argmax 0.89-0.96)."""
    model = factory(std=0.02).eval()
    seqs, mask = trajectory(model, 3, P, R, 6)
    exact = step_logits(model, seqs, mask, CacheConfig(), P)
    out = step_logits(model, seqs, mask, CacheConfig(kv_cache_dtype=FP8), P)
    d = logit_deviation(out, exact, P - 1, P + R - 1)
    assert d["max_rel"] <= 0.5 and d["argmax_agreement"] >= 0.8, d
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("policy", ["block-prefix", "block-dual"])
def test_block_policies_share_the_fp8_store(policy):
    """The block KV caches write K/V through the same store: refreshed every step they stay within
    fp8's bound of uncached; on block steps (stale rows read back through load) they run and stay finite."""
    model = tiny_llada(std=0.02).eval()
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    run = dict(gen_length=R, steps=R, block_length=8)
    ref = generate(model, ids, **run)
    with cache_enabled(model, CacheConfig(policy=policy, block_refresh=1, kv_cache_dtype=FP8)):
        every = generate(model, ids, **run)
    with cache_enabled(model, CacheConfig(policy=policy, kv_cache_dtype=FP8)):
        blocks = generate(model, ids, **run)
        held = cache_memory(model)
    assert (every[:, P:] == ref[:, P:]).float().mean() >= 0.9
    assert (blocks[:, P:] != model.config.mask_token_id).all()
    assert held["response_deltas"] == 0 and held["kv_workspace"] > 0


def _fp8_round_trip(v: torch.Tensor, heads: int) -> torch.Tensor:
    """v (batch, tokens, heads * head_dim) through e4m3 with one absmax / 448 scale per (batch, token, head),
    written here from the format's definition (not kv_store's code)."""
    x = v.float().unflatten(-1, (heads, -1))
    scale = x.abs().amax(-1, keepdim=True) / 448.0
    return ((x / scale).to(torch.float8_e4m3fn).float() * scale).flatten(-2)


def _cos_per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, kv_dim) x 2 -> (batch, tokens): cosine over all heads of a token (DESIGN: V-verify)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


@pytest.mark.parametrize("kv_dtype", [FP8, None], ids=["fp8", "exact"])
def test_drift_measurement_reads_the_dequantized_values(kv_dtype):
    """The same input twice: step 0 caches every V, step 1 (partial) V-verifies against them. Each layer's fresh
    V equals the one step 0 cached, so the measured drift is the store's rounding alone: with fp8, the mean over
    response tokens and V-verify layers (1..L-1) of 1 - cos(V, fp8 round trip of V), computed here from the V
    projections' outputs; with the exact store, 0. Tolerance 2% of the expected drift (fp32 noise is ~1e-7
    against a drift of ~1e-3): a stale workspace (another layer's V), a dequantization without its scale or a
    store without rounding all miss it."""
    model = tiny_llada(std=0.02).eval()
    heads = model.config.n_kv_heads
    x = torch.randint(0, 200, (2, P + R), generator=torch.Generator().manual_seed(0))
    x[:, P + 3 :: 2] = model.config.mask_token_id  # half the response still masked
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = [block.v_proj.register_forward_hook(lambda mod, args, out, i=i: seen.setdefault(i, []).append(out.detach()))
             for i, block in enumerate(model.model.transformer.blocks)]
    try:
        with torch.no_grad(), cache_enabled(model, CacheConfig(kv_cache_dtype=kv_dtype)), measure_drift(model):
            reset_cache(model, prompt_length=P)
            model(x)
            model(x)
            from dllm_cache import cache_stats

            stats = cache_stats(model)
            drift = stats["drift"]["cond"]["drift"]
    finally:
        for h in hooks:
            h.remove()
    assert stats["partial_steps"] == 1 and len(drift) == 1
    layers = range(1, model.config.n_layers)  # layer 0 recomputes every token: no V-verify there
    cached = {i: seen[i][0][:, P:] for i in layers}  # step 0: every row through v_proj; the response's rows
    fresh = {i: seen[i][1] for i in layers}  # step 1: V-verify projects the response rows only
    assert all(fresh[i].shape == cached[i].shape for i in layers)
    if kv_dtype is None:
        assert drift[0] <= 1e-6
        return
    expected = torch.stack([(1 - _cos_per_token(fresh[i], _fp8_round_trip(cached[i], heads))).mean()
                            for i in layers]).mean().item()
    assert 1e-5 < expected < 1 / 512  # an e4m3 round trip moves a vector by at most 1/16 of its norm
    assert abs(drift[0] - expected) <= 0.02 * expected, (drift[0], expected)


# ----------------------------------------------------------------------------- bytes


def test_bytes_per_token_and_layer_of_llada_8b():
    dims = ModelDims.from_config(llada_8b_config())
    exact = memory.bytes_per_token_layer(dims, 2)
    fp8 = memory.bytes_per_token_layer(dims, 2, FP8)
    assert exact == {"prompt": 16 * 1024, "response": 32 * 1024}
    assert fp8 == {"prompt": 8 * 1024 + 256, "response": 8 * 1024 + 256 + 16 * 1024}  # 32 heads x 2 scales x 4 B


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_store_bytes_halve_and_match_the_estimate(factory):
    """bf16 model: the fp8 K/V take (head_dim + 4) / (2 head_dim) of the exact ones; state bytes,
    the allocated tensors and the shape estimate agree, workspace (one layer's K/V) included."""
    model = factory().to(torch.bfloat16)
    ids = torch.randint(0, 200, (3, P), generator=torch.Generator().manual_seed(0))
    blocks = {} if sampler_of(model) == "dream" else {"block_length": 8}
    held = {}
    for kv_dtype in (None, FP8):
        with cache_enabled(model, CacheConfig(kv_cache_dtype=kv_dtype)):
            generate(model, ids, gen_length=R, steps=R, **blocks)
            held[kv_dtype] = cache_memory(model)
            allocated = sum(t.numel() * t.element_size() for t in _state(model).branch().tensors().values())
        assert held[kv_dtype]["total"] == allocated
        dims = ModelDims.from_config(model.config, allow_moe=True)
        est = memory.estimate_cache_bytes(dims, 3, P, R, 2, prompt_logit_rows=1 if sampler_of(model) == "dream" else 0,
                                          kv_cache_dtype=kv_dtype)
        for kind in memory.KINDS[:-1]:  # "other" (RoPE tables, masks) is estimated loosely
            assert held[kv_dtype][kind] == est[kind], (kv_dtype, kind)
    dims = ModelDims.from_config(model.config, allow_moe=True)
    kv = lambda h: h["prompt_kv"] + h["response_kv"]  # noqa: E731
    assert kv(held[FP8]) * 2 * dims.head_dim == kv(held[None]) * (dims.head_dim + 4)
    assert held[FP8]["kv_workspace"] == 2 * 3 * (P + R) * dims.kv_dim * 2  # one layer's K and V in bf16


def test_layers_share_one_workspace_per_branch():
    model = tiny_llada()
    ids = torch.randint(0, 200, (2, P))
    with cache_enabled(model, CacheConfig(kv_cache_dtype=FP8)):
        generate(model, ids, gen_length=R, steps=R, block_length=8, cfg_scale=1.0)
        branches = _state(model).branches
        assert set(branches) == {"cond", "uncond"}
        for branch in branches.values():
            assert len({id(s.kv.workspace) for s in branch.layers}) == 1 and len(branch.kv_workspaces) == 1
        generate(model, ids[:1], gen_length=R, steps=R, block_length=8)  # a new shape: a new workspace, the old freed
        branch = branches["cond"]
        assert len(branch.kv_workspaces) == 1 and branch.layers[0].kv.workspace.k.shape[0] == 1


def test_fit_check_counts_the_fp8_store(monkeypatch):
    """Free memory for 3 rows of fp8 cache: batch 4 stops naming batch 3; the exact cache fits fewer."""
    model = tiny_llada()
    dims = ModelDims.from_config(model.config, allow_moe=True)

    def need(batch, kv_dtype):
        cache = memory.estimate_cache_bytes(dims, batch, P, R, 4, 0, kv_cache_dtype=kv_dtype)["total"]
        return cache + memory.estimate_step_bytes(dims, batch, P + R, 8, 4)

    free = need(3, FP8) + 1
    assert need(3, None) > free
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: free)
    ids = torch.randint(0, 200, (4, P))
    with cache_enabled(model, CacheConfig(kv_cache_dtype=FP8)):
        with pytest.raises(memory.NotEnoughMemoryError, match="largest batch that fits is 3"):
            generate(model, ids, gen_length=R, steps=R, block_length=8)
        generate(model, ids[:3], gen_length=R, steps=R, block_length=8)


# ----------------------------------------------------------------------------- graphs and compile


def test_graph_protocol_with_fp8(stand_in_graphs):  # noqa: F811
    """Captured steps read the fp8 store and the shared workspace at fixed addresses (the stand-in
    graph asserts no buffer moved) and replay the eager tokens."""
    holder, captures = stand_in_graphs
    model = tiny_llada()
    holder.append(model)
    ids = torch.randint(0, 200, (2, P), generator=torch.Generator().manual_seed(0))
    run = dict(gen_length=32, steps=32, block_length=8)
    with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=False, kv_cache_dtype=FP8)):
        eager = generate(model, ids, **run)
    with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=True, kv_cache_dtype=FP8)):
        replayed = generate(model, ids, **run)
    assert torch.equal(replayed, eager) and len(captures) == 2


def test_compiled_layer_matches_eager_with_fp8():
    """The compiled cached layer (quantize / dequantize inside it) computes what the eager one does."""
    import warnings

    from torch._dynamo.utils import counters

    model = tiny_llada(n_layers=2).eval()
    seqs, mask = trajectory(model, 3, P, R, 6)
    eager = step_logits(model, seqs, mask, CacheConfig(100, 4, 0.25, kv_cache_dtype=FP8), P)
    before = counters["stats"]["calls_captured"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an eager fallback warns
        with cache_enabled(model, CacheConfig(100, 4, 0.25, compile=True, kv_cache_dtype=FP8)):
            reset_cache(model, prompt_length=P)
            out = [model(s, attention_mask=mask).logits for s in seqs]
    assert counters["stats"]["calls_captured"] > before
    assert max((o - e).abs().max().item() for o, e in zip(out, eager)) <= 1e-4
