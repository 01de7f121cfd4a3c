"""The GPU tier: what only CUDA runs (graph capture and replay, Inductor's GPU kernels, the
FlashAttention few-query path, the fp8 store's CUDA kernels, bf16 on a GPU).

Every test is marked `gpu` and skipped without CUDA; `eval/gpu/tests.sh` runs them on the GPU
machine and records the run in eval/results/gpu_tests.txt. Tiny models (dllm_cache.models.tiny),
a few seconds each. TF32 is off in every test, so float32 means float32.

Tolerances (each test says which it uses, and why):
- CUDA-graph replay runs the eager step's kernels on the same buffers: bit equality.
- torch.compile'd layer vs eager, float32: 1e-4 absolute on logits of magnitude ~5 (Inductor may
  reorder float32 sums; the CPU tier uses 1e-5 with the C++ backend).
- refresh-every-step vs uncached: float32 1e-4 absolute (the cached step runs other GEMM shapes,
  so cuBLAS may pick other kernels); bfloat16 1% of the largest |logit| on calm models (init std
  0.02; the default 0.15 makes a chaotic network where one bf16 rounding moves logits 2.5%).
- bfloat16 cached vs float32 uncached: 3% of the largest |logit|, argmax of 90% of rows (on CPU
  this measures 0.7-1.0%, argmax 95-99.6%, on the same calm models).
- the fp8 store: the bounds of tests/test_kv_fp8.py, which the CUDA kernels must meet too.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

import dllm_cache.engine.layer as layer
from dllm_cache import CacheConfig, cache_enabled, cache_stats, reset_cache
from dllm_cache.engine.kv_store import FP8_DTYPE, ExactKV, Fp8KV, dequantize, quantize
from dllm_cache.engine.patch import _state
from dllm_cache.hooks import sampler_of
from dllm_cache.models.layers import attend
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from tests.conftest import FACTORIES
from tests.test_kv_fp8 import MAX_REL, MIN_ARGMAX
from tests.trajectory import logit_deviation, step_logits, trajectory

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
P, R = 10, 16
ATOL_FP32 = 1e-4  # see the module docstring
BF16_REL = 1e-2  # bf16 cached vs bf16 uncached, relative to the largest |logit|
BF16_VS_FP32_REL = 0.03  # bf16 cached vs fp32 uncached


@pytest.fixture(autouse=True)
def no_tf32():
    """float32 matmuls in float32 (TF32 would round inputs to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _on_cuda(model, dtype=torch.float32):
    return model.to(CUDA, dtype)


def _traj(model, batch=3, steps=6, resp_len=R, **kw):
    seqs, mask = trajectory(model, batch, P, resp_len, steps, **kw)
    return [s.to(CUDA) for s in seqs], mask.to(CUDA)


def _max_err(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _response_rows(model) -> tuple[int, int]:
    shift = 1 if sampler_of(model) == "dream" else 0
    return P - shift, P + R - shift


@contextlib.contextmanager
def _no_fallback():
    """Fails if dllm-cache fell back to eager: a failed graph capture or compile warns, then runs eagerly
    (other warnings, from torch say, are not the test's business)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    fallbacks = [str(w.message) for w in caught if "dllm-cache" in str(w.message)]
    assert not fallbacks, fallbacks


class _SdpaOps(TorchDispatchMode):
    """The aten ops SDPA dispatches to (which backend ran), recorded by name."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if "scaled_dot_product" in name:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- CUDA graphs


GRAPH_CONFIGS = {
    "frontier": CacheConfig(100, 4, 0.25),
    "paper": CacheConfig(100, 4, 0.25, selection="paper"),
    "fp8": CacheConfig(100, 4, 0.25, kv_cache_dtype="fp8"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(GRAPH_CONFIGS))
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_graph_replay_equals_eager_step_by_step(factory, name, dtype):
    """Feature cache, 14 steps at Kr=4: partial steps warm up (step 1), capture (2) and replay (3, 5, ...);
    response steps warm up (4), capture (8), replay (12). Every step's logits equal the eager ones bit for bit."""
    model = _on_cuda(factory(), dtype)
    seqs, mask = _traj(model, steps=14, resp_len=32)  # 2 tokens unmasked per step
    config = GRAPH_CONFIGS[name]
    eager = step_logits(model, seqs, mask, replace(config, cuda_graphs=False), P)
    with _no_fallback():
        with torch.no_grad(), cache_enabled(model, config):
            reset_cache(model, prompt_length=P)
            graphed = [model(s, attention_mask=mask).logits.float().clone() for s in seqs]
            kinds = {key[0] for key in _state(model).branch().graphs}
    assert kinds == {"partial", "response"}, kinds  # both kinds really were captured
    for step, (g, e) in enumerate(zip(graphed, eager)):
        assert torch.equal(g, e), f"step {step}: max |graph - eager| = {(g - e).abs().max().item()}"


@pytest.mark.parametrize("policy", ["block-prefix", "block-dual"])
@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_block_policy_graphs_equal_eager(factory, policy):
    """Block KV caches under the samplers: graph-replayed block steps give the eager tokens, in a first
    generation (warm-up, capture) and a second one (replay only), with padded rows."""
    model = _on_cuda(factory())
    ids = torch.randint(0, 200, (3, 24), generator=torch.Generator().manual_seed(0)).to(CUDA)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    run = dict(gen_length=32, steps=32, block_length=8)
    with cache_enabled(model, CacheConfig(policy=policy, cuda_graphs=False)):
        eager = generate(model, ids, mask, **run)
    with _no_fallback():
        with cache_enabled(model, CacheConfig(policy=policy, cuda_graphs=True)):
            first = generate(model, ids, mask, **run)
            second = generate(model, ids, mask, **run)
            kinds = {key[0] for key in _state(model).branch().graphs}
            block_steps = cache_stats(model)["block_steps"]
    assert kinds == {"block"} and block_steps > 0
    assert torch.equal(first, eager) and torch.equal(second, eager)


# ----------------------------------------------------------------------------- torch.compile


def test_compiled_layer_equals_eager_on_cuda():
    """Inductor's CUDA kernels for the cached layer (partial and response steps, layer 0 and the rest),
    replayed inside CUDA graphs as deployed: float32 logits within ATOL_FP32 of the eager cached layer."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh: the counter below then proves this test traced the layer
    model = _on_cuda(tiny_llada(n_layers=2))
    seqs, mask = _traj(model, steps=10, resp_len=32)
    eager = step_logits(model, seqs, mask, CacheConfig(100, 4, 0.25, cuda_graphs=False), P)
    before = counters["stats"]["calls_captured"]
    with _no_fallback():
        out = step_logits(model, seqs, mask, CacheConfig(100, 4, 0.25, compile=True, cuda_graphs=True), P)
    assert counters["stats"]["calls_captured"] > before
    assert _max_err(out, eager) <= ATOL_FP32


def test_compiled_layer_reproduces_uncached_on_cuda():
    """An expectation independent of the layer's code: no prompt and every response token selected,
    so the compiled partial path must give the uncached model's logits (float32, ATOL_FP32)."""
    model = _on_cuda(tiny_llada(n_layers=2))
    seqs, mask = trajectory(model, 2, 0, 16, 6, padded=False)
    seqs, mask = [s.to(CUDA) for s in seqs], mask.to(CUDA)
    ref = step_logits(model, seqs, mask, None, 0)
    with _no_fallback():
        out = step_logits(model, seqs, mask, CacheConfig(100, 8, 1.0, compile=True), 0)
    assert _max_err(out, ref) <= ATOL_FP32


# ----------------------------------------------------------------------------- FlashAttention few-query path


def test_few_query_attention_takes_flash_and_equals_math():
    """8 queries x 4,096 keys x 4 heads, no key mask: _attend_cached runs FlashAttention (the aten op
    says so), and its output equals the SDPA math backend's within bf16 rounding of a float32 reference."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    q = torch.randn(1, 4, 8, 64, device=CUDA, generator=g, dtype=torch.bfloat16)
    k = torch.randn(1, 4, 4096, 64, device=CUDA, generator=g, dtype=torch.bfloat16)
    v = torch.randn(1, 4, 4096, 64, device=CUDA, generator=g, dtype=torch.bfloat16)
    with _SdpaOps() as ops:
        out = layer._attend_cached(q, k, v, None)
    assert any("_scaled_dot_product_flash_attention" in n for n in ops.names), ops.names
    with sdpa_kernel([SDPBackend.MATH]):
        math = attend(q, k, v, None)
    ref = attend(q.float(), k.float(), v.float(), None)
    scale = ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= 2e-2 * scale
    assert (out.float() - math.float()).abs().max().item() <= 2e-2 * scale


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_cached_steps_with_a_long_prompt_take_flash_and_equal_math(factory, monkeypatch):
    """Batch 1, 4 heads, a 2,040-token prompt: every cached step's attention (32 response queries or
    8 selected ones against 2,072 keys) goes through FlashAttention; the same steps with the few-query
    backends forced to SDPA's math give the same logits within 1% of the largest |logit| (bf16)."""
    long_p, r = 2040, 32
    model = _on_cuda(factory(std=0.02, **({"max_sequence_length": 4096} if factory is tiny_llada
                                            else {"max_position_embeddings": 4096})), torch.bfloat16)
    seqs, mask = trajectory(model, 1, long_p, r, 6, padded=False)
    seqs = [s.to(CUDA) for s in seqs]
    config = CacheConfig(100, 4, 0.25, cuda_graphs=False)  # eager steps, so the dispatch mode sees every op

    def run():
        with torch.no_grad(), cache_enabled(model, config), _SdpaOps() as ops:
            reset_cache(model, prompt_length=long_p)
            out = [model(s).logits.float() for s in seqs]
            stats = cache_stats(model)
        return out, ops.names, stats

    flash, names, stats = run()
    assert stats["partial_steps"] > 0 and stats["response_refresh_steps"] > 0
    n_flash = sum("_scaled_dot_product_flash_attention" in n for n in names)
    n_layers = model.config.num_hidden_layers if factory is tiny_dream else model.config.n_layers
    assert n_flash >= (len(seqs) - 1) * n_layers, names  # every layer of every cached step
    monkeypatch.setattr(layer, "_FEW_QUERY_BACKENDS", [SDPBackend.MATH])
    math, names, _ = run()
    # only the first (full) step's plain attention may still pick FlashAttention by default
    assert sum("_scaled_dot_product_flash_attention" in n for n in names) <= n_layers, names
    scale = max(m.abs().max().item() for m in math)
    assert _max_err(flash, math) <= 1e-2 * scale


# ----------------------------------------------------------------------------- fp8 K/V store


def test_fp8_round_trip_on_cuda_is_bounded_and_matches_cpu():
    """The bounds test_kv_fp8 checks on CPU, for the CUDA kernels; and the CUDA quantization is the CPU's up to
    one ulp of the float32 scale (CUDA divides by the scalar 448 as a multiplication by 1/448; seen on an H200,
    torch 2.11: scales 1 ulp apart, fp8 values identical on this input)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 64, generator=g) * torch.logspace(-3, 3, 5)[None, None, :, None]
    q, scale = quantize(x.to(CUDA))
    assert q.dtype == FP8_DTYPE and q.device.type == CUDA.type and scale.shape == (2, 3, 5, 1)
    y = dequantize(q, scale, torch.float32).cpu()
    assert ((y - x).abs() <= x.abs() / 16 + scale.cpu() * 2**-10 + 1e-12).all()
    assert ((y - x).abs().amax(-1) / x.abs().amax(-1)).max().item() <= 1 / 28
    q_cpu, scale_cpu = quantize(x)
    assert torch.allclose(scale.cpu(), scale_cpu, rtol=2**-22, atol=0)
    assert (q.cpu().float() == q_cpu.float()).float().mean().item() >= 0.999


def test_fp8_store_on_cuda_reads_what_it_wrote():
    """Fp8KV's CUDA write paths (rows, a (n,) index, a (batch, n) index, through uint8 views) and load(): the
    rows each write lands in are worked out on the CPU, the rounding is CUDA's (see the test above)."""
    shape = (2, 3, 12, 8)
    ws = ExactKV.empty(shape, torch.bfloat16, CUDA)
    kv = Fp8KV.empty(shape, ws)
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(shape, generator=g).bfloat16(), torch.randn(shape, generator=g).bfloat16()
    k2, k3, v4 = (torch.randn(2, 3, n, 8, generator=g).bfloat16() for n in (4, 2, 2))
    idx, sel = torch.tensor([1, 5]), torch.tensor([[0, 2], [3, 1]])
    kv.write(0, k=k.to(CUDA), v=v.to(CUDA))
    kv.write(8, k=k2.to(CUDA))
    kv.write(0, k=k3.to(CUDA), index=idx.to(CUDA))
    kv.write(4, v=v4.to(CUDA), index=sel.to(CUDA))
    want_k, want_v = k.clone(), v.clone()  # built on the CPU from the write semantics
    want_k[:, :, 8:] = k2
    want_k[:, :, idx] = k3
    for b in range(2):
        want_v[b, :, 4 + sel[b]] = v4[b]
    written = kv.k.clone(), kv.v.clone()
    ws.k.zero_()
    ws.v.zero_()
    kv.load()
    for got, again, want in ((written[0], kv.k, want_k), (written[1], kv.v, want_v)):
        expected = dequantize(*quantize(want.to(CUDA)), torch.bfloat16)  # the device's own rounding
        assert torch.equal(got, expected) and torch.equal(again, expected)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_fp8_refresh_every_step_is_close_to_uncached_on_cuda(family):
    """Nothing stale: what remains is fp8's rounding of K/V, within test_kv_fp8's bound (float32 model)."""
    model = _on_cuda(FACTORIES[family](std=0.02).eval())
    seqs, mask = _traj(model)
    ref = step_logits(model, seqs, mask, None, P)
    out = step_logits(model, seqs, mask, CacheConfig(1, 1, kv_cache_dtype="fp8"), P)
    d = logit_deviation(out, ref, *_response_rows(model))
    assert 0 < d["max_rel"] <= MAX_REL, d
    assert d["argmax_agreement"] >= MIN_ARGMAX, d


# ----------------------------------------------------------------------------- exactness and bf16


EVERY_STEP = {"kp1_kr1": CacheConfig(1, 1), "kp1_ratio1": CacheConfig(1, 8, 1.0)}


@pytest.mark.parametrize("every", sorted(EVERY_STEP))
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_refresh_every_step_equals_uncached_fp32_on_cuda(family, every):
    """float32, padded batch: nothing stale, so the cached logits are the uncached ones within ATOL_FP32."""
    model = _on_cuda(FACTORIES[family]())
    seqs, mask = _traj(model)
    ref = step_logits(model, seqs, mask, None, P)
    out = step_logits(model, seqs, mask, EVERY_STEP[every], P)
    assert _max_err(out, ref) <= ATOL_FP32


@pytest.mark.parametrize("every", sorted(EVERY_STEP))
@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_refresh_every_step_equals_uncached_bf16_on_cuda(family, every):
    """bfloat16 on calm models: cached within BF16_REL of uncached, both in bf16 on the GPU."""
    model = _on_cuda(FACTORIES[family](std=0.02), torch.bfloat16)
    seqs, mask = _traj(model)
    ref = step_logits(model, seqs, mask, None, P)
    out = step_logits(model, seqs, mask, EVERY_STEP[every], P)
    scale = max(r.abs().max().item() for r in ref)
    assert _max_err(out, ref) <= BF16_REL * scale


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_bf16_cached_stays_near_fp32_uncached(family):
    """What a bf16 deployment costs against the float32 model, cache included (refresh every step)."""
    ref_model = _on_cuda(FACTORIES[family](std=0.02))
    seqs, mask = _traj(ref_model)
    ref = step_logits(ref_model, seqs, mask, None, P)
    model = _on_cuda(FACTORIES[family](std=0.02), torch.bfloat16)  # the same weights, built afresh
    out = step_logits(model, seqs, mask, CacheConfig(1, 8, 1.0), P)
    d = logit_deviation(out, ref, *_response_rows(model))
    assert 0 < d["max_rel"] <= BF16_VS_FP32_REL, d  # > 0: the model really ran in bf16
    assert d["argmax_agreement"] >= MIN_ARGMAX, d
