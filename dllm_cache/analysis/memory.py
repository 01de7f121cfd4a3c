"""Memory: what the cache holds (measured on a live cache, or from the shapes alone), what a
generation peaks at, and a clear error before a generation that cannot fit on its device.

Per token and layer the cache keeps K and V of every token (2 * kv_heads * head_dim values)
and, for response tokens only, the attention and FFN outputs (2 * d_model values); prompt-row
logits only for the rows a caller asked for (`logits_to_keep`). With an fp8 K/V store
(CacheConfig.kv_cache_dtype="fp8") K/V take 1 byte a value plus a float32 scale per token and
KV head, and one layer's K/V in the model's dtype are kept as the workspace attention reads. Estimates of temporaries are
deliberately the dominant terms only, so the fit check errs on the side of letting a run start.

Mixture of experts (LLaDA-MoE, LLaDA 2.x): the weights are every expert's (the memory a model holds), while a
token's FFN temporaries are those of its top-k experts and the shared experts; what the cache keeps (K/V with
the config's KV heads and head_dim, the attention and FFN outputs of width d_model) does not depend on the FFN.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..engine.kv_store import kv_bytes_per_token_head
from .flops import ModelDims

if TYPE_CHECKING:
    from ..engine.state import BranchState, CacheState

# kv_workspace: the fp8 K/V store's one layer of dequantized K/V (0 for the exact store)
KINDS = ("prompt_kv", "response_kv", "kv_workspace", "response_deltas", "prompt_deltas", "prompt_logits", "other")
CHECK_ENV = "DLLM_CACHE_MEMORY_CHECK"  # "0" turns the fit check off


class NotEnoughMemoryError(RuntimeError):
    """A generation's estimated memory exceeds what its device has free."""


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def branch_bytes(branch: BranchState) -> dict[str, int]:
    """Bytes one branch holds between steps, by kind (KINDS); K/V (with any fp8 scales) split at the
    prompt length."""
    out = dict.fromkeys(KINDS, 0)
    for store in branch.layers:
        if store is None:
            continue
        kv = sum(_nbytes(t) for t in store.kv.tensors().values())
        seq = store.kv.shape[2]
        prompt_kv = kv * branch.prompt_len // seq if seq else 0
        out["prompt_kv"] += prompt_kv
        out["response_kv"] += kv - prompt_kv
        out["response_deltas"] += _nbytes(store.attn) + _nbytes(store.ffn)  # none under block policies
        out["prompt_deltas"] += _nbytes(store.prompt_attn) + _nbytes(store.prompt_ffn)
    out["kv_workspace"] = sum(_nbytes(t) for w in branch.kv_workspaces.values() for t in w.tensors().values())
    out["prompt_logits"] = _nbytes(branch.prompt_logits)
    out["other"] = sum(_nbytes(getattr(branch, n))
                       for n in ("rope_cos", "rope_sin", "key_mask", "logit_index", "block_index"))
    return out


def state_bytes(state: CacheState) -> dict[str, int]:
    """Bytes the whole cache (every branch) holds now, by kind, plus "total"."""
    out = dict.fromkeys(KINDS, 0)
    for branch in state.branches.values():
        for kind, n in branch_bytes(branch).items():
            out[kind] += n
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- from the shapes


def kv_bytes_per_token_layer(dims: ModelDims, dtype_bytes: int = 2, kv_cache_dtype: str | None = None) -> int:
    """K and V of one token in one layer, as stored (CacheConfig.kv_cache_dtype; fp8 scales included)."""
    return dims.n_kv_heads * kv_bytes_per_token_head(dims.head_dim, dtype_bytes, kv_cache_dtype)


def bytes_per_token_layer(dims: ModelDims, dtype_bytes: int = 2, kv_cache_dtype: str | None = None) -> dict[str, int]:
    """The cache's cost of one token in one layer: a prompt token keeps K and V, a response
    token K, V and its two residual deltas (in the model's dtype whatever the K/V store)."""
    kv = kv_bytes_per_token_layer(dims, dtype_bytes, kv_cache_dtype)
    return {"prompt": kv, "response": kv + 2 * dims.d_model * dtype_bytes}


def estimate_cache_bytes(
    dims: ModelDims,
    batch: int,
    prompt_len: int,
    gen_len: int,
    dtype_bytes: int = 2,
    prompt_logit_rows: int = 0,
    prompt_deltas: bool = False,
    n_layers: int | None = None,
    deltas: bool = True,
    kv_cache_dtype: str | None = None,
) -> dict[str, int]:
    """What `state_bytes` will report for one branch of this shape, by kind, plus "total".

    prompt_logit_rows: prompt rows whose logits the caller keeps (Dream's sampler: 1, LLaDA's: 0,
    a plain model(x) call: all P); prompt_deltas: the model's LM head cannot be patched.
    n_layers: layers on the device in question (default all). deltas False: a block policy (K/V only).
    kv_cache_dtype: CacheConfig's; "fp8" adds one layer's K/V in the model's dtype (the workspace)."""
    layers = dims.n_layers if n_layers is None else n_layers
    kv = kv_bytes_per_token_layer(dims, dtype_bytes, kv_cache_dtype)
    delta = 2 * dims.d_model * dtype_bytes
    seq = prompt_len + gen_len
    workspace = 2 * batch * seq * dims.kv_dim * dtype_bytes if kv_cache_dtype is not None and layers else 0
    out = {
        "prompt_kv": batch * layers * prompt_len * kv,
        "response_kv": batch * layers * gen_len * kv,
        "kv_workspace": workspace,
        "response_deltas": batch * layers * gen_len * delta if deltas else 0,
        "prompt_deltas": batch * layers * prompt_len * delta if prompt_deltas and deltas else 0,
        "prompt_logits": batch * prompt_logit_rows * dims.vocab * dtype_bytes,
        "other": 2 * batch * seq * dims.head_dim * 4 + batch * seq,  # float32 RoPE tables, key mask
    }
    out["total"] = sum(out.values())
    return out


def estimate_block_causal_cache_bytes(
    dims: ModelDims, batch: int, prompt_len: int, gen_len: int, block_length: int | None, dtype_bytes: int = 2,
) -> dict[str, int]:
    """What a block-diffusion model's cache (LLaDA 2.x: `dllm_cache.engine.block_causal.BlockCausalCache`) holds
    for one generation, by kind (KINDS) plus "total": K/V of every column of the sequence rounded up to whole
    blocks (prompt_kv the first P columns, response_kv the rest) and the attention and FFN outputs of the
    current block's rows only (response_deltas: B rows, not the whole response), in every layer; "other" the
    float32 RoPE tables (head_dim wide: an upper bound under partial RoPE). block_length None: one block of
    gen_len rows over P + R columns."""
    B = block_length or gen_len
    total = -(-(prompt_len + gen_len) // B) * B if block_length else prompt_len + gen_len
    kv = kv_bytes_per_token_layer(dims, dtype_bytes)
    out = dict.fromkeys(KINDS, 0)
    out["prompt_kv"] = batch * dims.n_layers * prompt_len * kv
    out["response_kv"] = batch * dims.n_layers * (total - prompt_len) * kv
    out["response_deltas"] = batch * dims.n_layers * B * 2 * dims.d_model * dtype_bytes
    out["other"] = 2 * batch * total * dims.head_dim * 4
    out["total"] = sum(out.values())
    return out


def estimate_step_bytes(dims: ModelDims, batch: int, tokens: int, logit_rows: int, dtype_bytes: int = 2,
                        layers: bool = True, head: bool = True) -> int:
    """Temporaries of one forward of `tokens` rows per sequence: the larger of one layer's
    (residual stream in and out, its norm in float32, the FFN's gate, up and product) and the
    head's (final norm in float32, `logit_rows` rows of logits). Dominant terms only."""
    d, B = dims.d_model, dtype_bytes
    layer = batch * tokens * (2 * d * B + 4 * d + _ffn_temporaries_per_token(dims, B)) if layers else 0
    head_bytes = batch * tokens * (d * B + 4 * d) + batch * logit_rows * dims.vocab * B if head else 0
    return max(layer, head_bytes)


def _ffn_temporaries_per_token(dims: ModelDims, dtype_bytes: int) -> int:
    """The largest FFN temporaries of one token in any layer: a dense layer's gate, up and product (3 x
    d_ff); a routed layer's router scores in float32 and the gate, up and product of its top-k experts and
    shared experts (3 x (k * d_expert + d_shared))."""
    dense = 3 * dims.d_ff * dtype_bytes if dims.n_layers > len(dims.moe_layers) else 0
    routed = 0
    if dims.is_moe:
        routed = 4 * dims.n_experts + 3 * (dims.experts_per_tok * dims.d_expert + dims.d_shared) * dtype_bytes
    return max(dense, routed)


def weights_bytes(dims: ModelDims, dtype_bytes: int = 2, tied: bool = False) -> int:
    """Parameters of the layers (every expert of a mixture of experts), the embedding and (unless tied)
    the LM head."""
    return dtype_bytes * (dims.params_layers + dims.params_lm_head * (1 if tied else 2))


def generation_peak_bytes(
    dims: ModelDims,
    batch: int,
    prompt_len: int,
    gen_len: int,
    dtype_bytes: int = 2,
    cached: bool = True,
    logit_rows: int | None = None,
    sampler_rows: int = 0,
    prompt_logit_rows: int = 0,
    branches: int = 1,
    tied: bool = False,
    deltas: bool = True,
    kv_cache_dtype: str | None = None,
    block_length: int | None = None,
) -> dict[str, int]:
    """Estimated whole-process peak of a generation: weights (every expert of a mixture of experts), the
    cache (cached runs), the temporaries of a full step, and the sampler's float32 softmax of `sampler_rows` rows.

    logit_rows: rows through the LM head on a full step (default all P + R: what an uncached
    model computes). Cached runs also keep each captured step's temporaries (two step kinds per
    branch, R rows each). deltas False: a block KV-cache policy, which keeps K/V only. kv_cache_dtype:
    the cache's K/V store (CacheConfig's). A block-diffusion model (`dims.block_causal`, LLaDA 2.x) keeps
    `estimate_block_causal_cache_bytes` (its sampler's `block_length`) and captures no graphs. Returns the
    terms and "total"."""
    seq = prompt_len + gen_len
    rows = seq if logit_rows is None else logit_rows
    out = {
        "weights": weights_bytes(dims, dtype_bytes, tied),
        "cache": 0,
        "step": estimate_step_bytes(dims, batch, seq, rows, dtype_bytes),
        "graphs": 0,
        "sampler": 2 * batch * sampler_rows * dims.vocab * 4,
    }
    if cached and dims.block_causal:
        out["cache"] = branches * estimate_block_causal_cache_bytes(
            dims, batch, prompt_len, gen_len, block_length, dtype_bytes)["total"]
    elif cached:
        out["cache"] = branches * estimate_cache_bytes(
            dims, batch, prompt_len, gen_len, dtype_bytes, prompt_logit_rows, prompt_deltas=tied, deltas=deltas,
            kv_cache_dtype=kv_cache_dtype,
        )["total"]
        out["graphs"] = 2 * branches * estimate_step_bytes(dims, batch, gen_len, min(rows, gen_len), dtype_bytes)
    out["total"] = sum(out.values())
    return out


def largest_batch(peak_at: Callable[[int], int], budget: int, upper: int = 1 << 40) -> int:
    """The largest batch b >= 0 with peak_at(b) <= budget (peak_at grows with b)."""
    if peak_at(1) > budget:
        return 0
    lo, hi = 1, 2
    while hi < upper and peak_at(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak_at(mid) <= budget else (lo, mid)
    return lo


# ----------------------------------------------------------------------------- the device


def device_free_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can get on `device`: free on the card plus what PyTorch's caching
    allocator holds unused. None where that is unknown (CPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def check_enabled() -> bool:
    return os.environ.get(CHECK_ENV, "1") != "0"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_block_causal_fits(dims: ModelDims, batch: int, prompt_len: int, gen_len: int, block_length: int,
                            device: torch.device, dtype_bytes: int = 2) -> None:
    """Before a cached block-diffusion generation (LLaDA 2.x): raise NotEnoughMemoryError when its cache
    (`estimate_block_causal_cache_bytes`) plus the temporaries of a step over the prompt (the first commit:
    P rows, no logits) or a block cannot fit in what `device` has free, naming the largest batch that would.
    No-op where free memory is unknown (CPU) or with DLLM_CACHE_MEMORY_CHECK=0."""
    if not check_enabled():
        return
    free = device_free_bytes(device)
    if free is None:
        return

    def need(b: int) -> int:
        cache = estimate_block_causal_cache_bytes(dims, b, prompt_len, gen_len, block_length, dtype_bytes)["total"]
        return cache + estimate_step_bytes(dims, b, max(prompt_len, block_length), block_length, dtype_bytes)

    if need(batch) > free:
        raise _not_enough(f"a cached block-diffusion generation of batch {batch} (prompt {prompt_len} + gen {gen_len}, "
                          f"blocks of {block_length})", need, batch, free, device,
                          "K/V of every column, one block's features, a step's temporaries",
                          "shorten the prompt or the generation")


def _not_enough(what: str, need: Callable[[int], int], batch: int, available: int, device: torch.device | str, parts: str,
                shorten: str) -> NotEnoughMemoryError:
    """The fit checks' one error: what needs how much (`parts`: of what) against what is free, and the largest
    batch that would fit, or what to shorten when not even batch 1 does."""
    fits = largest_batch(need, available)
    return NotEnoughMemoryError(
        f"dllm-cache: {what} needs about {gib(need(batch))} on {device} ({parts}), but {gib(available)} is free. "
        + (f"The largest batch that fits is {fits}: split the batch. " if fits else
           f"Even batch 1 does not fit: {shorten}. ")
        + f"(Estimate from the shapes; set {CHECK_ENV}=0 to try anyway.)"
    )


def check_generation_fits(
    model: nn.Module,
    blocks: list[nn.Module],
    branch: BranchState,
    input_ids: torch.Tensor,
    logit_rows: int,
    prompt_logit_rows: int,
    prompt_deltas: bool,
    deltas: bool = True,
    kv_cache_dtype: str | None = None,
) -> None:
    """Before step 0 of a cached generation: raise NotEnoughMemoryError when this branch's cache
    plus a full step's temporaries cannot fit on a device that holds its layers, naming the
    largest batch that would. The branch's current buffers count as free (they are replaced).

    blocks: the cached transformer blocks (their devices say where each layer's cache lives; the
    LM head is taken to sit with the last one); logit_rows / prompt_logit_rows: rows the caller
    asked for, and how many of them are prompt rows; kv_cache_dtype: the cache's K/V store."""
    if not check_enabled():
        return
    try:
        dims = ModelDims.from_config(model.config)
    except (ValueError, TypeError, AttributeError):
        return  # a config we cannot read: no estimate, no check
    params = [next(b.parameters(), None) for b in blocks]
    devices = [p.device for p in params if p is not None] or [input_ids.device]
    dtype_bytes = next((p.element_size() for p in params if p is not None), 2)
    batch, seq = input_ids.shape[:2]  # token ids, or embeddings (batch, seq, hidden)
    P = branch.prompt_len
    held: dict[torch.device, int] = {}
    for t in branch.tensors().values():
        held[t.device] = held.get(t.device, 0) + _nbytes(t)
    for device in dict.fromkeys(devices):
        free = device_free_bytes(device)
        if free is None:
            continue
        n_layers, has_head = devices.count(device), device == devices[-1]

        def need(b: int, n_layers: int = n_layers, has_head: bool = has_head) -> int:
            cache = estimate_cache_bytes(dims, b, P, seq - P, dtype_bytes, prompt_logit_rows if has_head else 0,
                                         prompt_deltas, n_layers, deltas, kv_cache_dtype)["total"]
            return cache + estimate_step_bytes(dims, b, seq, logit_rows, dtype_bytes, head=has_head)

        available = free + held.get(device, 0)
        if need(batch) > available:
            raise _not_enough(f"a cached generation of batch {batch} x {seq} tokens (prompt {P})", need, batch,
                              available, device, f"{n_layers} layers' cache and a full step's temporaries",
                              "shorten the prompt")
