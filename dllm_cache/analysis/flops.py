"""Analytic FLOPs and bytes of one denoising step, and of a whole cached generation.

Why analytic: wall-clock speedups depend on the GPU, the batch size and kernel launch
overheads; a FLOPs count says how much work the cache removes, independent of all three.
`measure_step_flops` cross-checks the "full" count against `torch.utils.flop_counter`.

Conventions
-----------
* One multiply-add = 2 FLOPs. A linear layer of shape (n_in -> n_out) costs 2 * n_in * n_out
  per token; biases are not counted (FlopCounterMode does not count them either).
* Attention of `q` query tokens against `kv` key tokens costs 2 * 2 * q * kv * head_dim *
  n_heads (scores Q K^T, then the weighted sum with V), counted on the query heads, so grouped
  query attention costs the same as full multi-head attention here. This is exactly what
  FlopCounterMode charges for `scaled_dot_product_attention`.
* Both families use a gated FFN (gate/up/down = LLaDA ff_proj/up_proj/ff_out, Qwen2/Dream
  gate_proj/up_proj/down_proj): 3 * 2 * d_model * d_ff per token.
* RMSNorm, RoPE, softmax, SiLU, residual adds, the embedding gather and the cache's cosine
  similarity are not counted: they are O(tokens * d_model) per layer against
  O(tokens * d_model^2) for the projections (well under 1% at d_model >= 1024).
* Logits (`logits_tokens` per batch row, default as the cache does it): the models compute
  the LM head for every position, so "full" and "prompt" steps (prompt refreshed) pay for
  P + R rows; on "response" and "partial" steps the cache reuses the prompt rows' logits
  from the last prompt refresh and runs the head on the R response rows only. (A LLaDA
  model with weight tying has no separate head module for the cache to patch and pays for
  P + R rows on every step: pass logits_tokens=P + R.) Callers that ask for fewer rows
  (`logits_to_keep`, as our samplers do) pass a dict of rows per step kind.

Step kinds (names follow `dllm_cache.engine.schedule.step_kind`)
--------------------------------------------------------
full      every token (prompt + response) through every layer. The uncached model does this
          on every step ("uncached" is an alias).
response  the R response tokens through every layer (q/k/v/o, FFN); their queries attend to
          all P + R keys (prompt K/V come from the cache).
partial   layer 0 as in "response" (its input, the embeddings, changes whenever a token is
          unmasked); every other layer projects V for all R response tokens (for the drift
          test) and recomputes q/k/o + FFN + attention only for k = int(R * transfer_ratio)
          selected tokens, whose queries attend to all P + R keys (with `layer_ratios`, each
          layer its own k = int(R * ratio)). The drift-triggered refresh changes no step's
          work, only how many steps of each kind a generation takes.
prompt    a prompt refresh (step % Kp == 0) that is not a response refresh: layer 0 "full";
          every other layer recomputes the P prompt tokens (q/k/v/o, FFN, P queries against
          P + R keys) plus the "partial" work on the response.
block     block KV-cache policies (`dllm_cache.engine.block_cache`): `rows` rows through every layer
          (q/k/v/o, FFN), their queries against all P + R keys (the others' K/V cached). Their
          refreshes are "full" steps. Which rows: `block_region` of the block the sampler decodes
          (dual: the block, plus the last block token on a shifted model; prefix: the block and
          everything after it), so a generation's cost depends on its blocks and steps per block.

These are exactly the matmuls `dllm_cache.engine.layer` and `dllm_cache.engine.block_cache` run; tests check
every kind against FlopCounterMode on a cached forward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dllm_cache.config import CacheConfig

FEATURE_KINDS = ("full", "response", "prompt", "partial")  # the feature cache's step kinds
STEP_KINDS = (*FEATURE_KINDS, "block")  # "block": the block KV-cache policies
_KIND_ALIASES = {"uncached": "full"}


def _get(config: Any, *keys: str, default: Any = None) -> Any:
    """First non-None value among `keys` on a config object or dict."""
    for key in keys:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class ModelDims:
    """The few numbers FLOPs depend on, normalised across LLaDA and Dream/Qwen2 configs."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int  # width of the LM head (LLaDA: embedding_size, which pads vocab_size)
    logit_shift: int = 0  # 1 when logits at row i predict token i + 1 (Dream)

    @classmethod
    def from_config(cls, config: Any, allow_moe: bool = False) -> ModelDims:
        """Read dims from a LLaDA or Dream/Qwen2 config (object or dict).

        LLaDA keys: d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size (or mlp_ratio),
        embedding_size / vocab_size. Dream keys: hidden_size, num_attention_heads,
        num_key_value_heads, num_hidden_layers, intermediate_size, vocab_size.
        Mixture-of-experts configs are refused (their FFN FLOPs are not modelled) unless
        `allow_moe`: what the cache stores (K/V, deltas, logits) does not depend on the FFN.
        """
        if not allow_moe and _get(config, "num_experts", "expert_intermediate_size") is not None:
            raise ValueError(
                f"analytic FLOPs are not modelled for mixture-of-experts configs ({type(config).__name__}: "
                "routed experts per token, dense and MoE layers mixed); count them with measure_step_flops."
            )
        d_model = _get(config, "d_model", "hidden_size")
        n_heads = _get(config, "n_heads", "num_attention_heads")
        n_layers = _get(config, "n_layers", "num_hidden_layers")
        if d_model is None or n_heads is None or n_layers is None:
            raise ValueError(
                f"cannot read model dims from {type(config).__name__}: expected LLaDA keys "
                "(d_model, n_heads, n_layers, mlp_hidden_size, vocab_size) or Dream/Qwen2 keys "
                "(hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, "
                "vocab_size)"
            )
        n_kv_heads = _get(config, "n_kv_heads", "num_key_value_heads", default=n_heads)
        head_dim = _get(config, "head_dim", default=d_model // n_heads)
        d_ff = _get(config, "mlp_hidden_size", "intermediate_size")
        if d_ff is None:
            d_ff = int(_get(config, "mlp_ratio", default=4) * d_model)
        vocab = _get(config, "embedding_size", "vocab_size")
        if vocab is None:
            raise ValueError(f"{type(config).__name__} has neither embedding_size nor vocab_size")
        return cls(
            d_model=int(d_model),
            n_layers=int(n_layers),
            n_heads=int(n_heads),
            n_kv_heads=int(n_kv_heads),
            head_dim=int(head_dim),
            d_ff=int(d_ff),
            vocab=int(vocab),
            logit_shift=int("dream" in str(_get(config, "model_type", default="")).lower()),
        )

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    # Per-token matmul FLOPs of one layer's pieces.
    @property
    def flops_q(self) -> int:
        return 2 * self.d_model * self.q_dim

    @property
    def flops_k(self) -> int:
        return 2 * self.d_model * self.kv_dim

    @property
    def flops_v(self) -> int:
        return 2 * self.d_model * self.kv_dim

    @property
    def flops_o(self) -> int:
        return 2 * self.q_dim * self.d_model

    @property
    def flops_ffn(self) -> int:
        return 3 * 2 * self.d_model * self.d_ff

    @property
    def flops_token_layer(self) -> int:
        """Projections + FFN of one token in one layer (attention scores excluded)."""
        return self.flops_q + self.flops_k + self.flops_v + self.flops_o + self.flops_ffn

    def attention_flops(self, n_queries: int, n_keys: int) -> int:
        """Q K^T and the weighted sum with V for one batch row, one layer."""
        return 2 * 2 * n_queries * n_keys * self.head_dim * self.n_heads

    # Parameter counts (weights read from memory), per layer and for the LM head.
    @property
    def params_v(self) -> int:
        return self.d_model * self.kv_dim

    @property
    def params_layer(self) -> int:
        return self.flops_token_layer // 2

    @property
    def params_lm_head(self) -> int:
        return self.d_model * self.vocab

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _as_dims(dims: ModelDims | Any) -> ModelDims:
    return dims if isinstance(dims, ModelDims) else ModelDims.from_config(dims)


def _normalise_kind(kind: str) -> str:
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {STEP_KINDS} or 'uncached'")
    return kind


def lm_head_tokens(kind: str, prompt_len: int, resp_len: int) -> int:
    """Rows per batch row that go through the LM head on a step of `kind`, as the cache runs it.

    Prompt refreshes ("full", "prompt") recompute all P + R rows; otherwise the prompt rows'
    logits are reused and only the R response rows are computed ("block": at most those).
    """
    kind = _normalise_kind(kind)
    return prompt_len + resp_len if kind in ("full", "prompt") else resp_len


def _head_rows(logits_tokens: int | dict[str, int] | None, kind: str, prompt_len: int, resp_len: int) -> int:
    if logits_tokens is None:
        return lm_head_tokens(kind, prompt_len, resp_len)
    return logits_tokens[kind] if isinstance(logits_tokens, dict) else logits_tokens


def selected_tokens(resp_len: int, transfer_ratio: float) -> int:
    """Response tokens recomputed per row and layer on a partial step by the paper's selection:
    int(R * ratio) (`CacheConfig.selected_count` for every selection)."""
    if not 0.0 <= transfer_ratio <= 1.0:
        raise ValueError(f"transfer_ratio must be in [0, 1], got {transfer_ratio}")
    return int(resp_len * transfer_ratio)


def _partial_counts(d: ModelDims, resp_len: int, transfer_ratio: float, selected) -> list[int]:
    """Tokens recomputed by each of layers 1 .. L-1 on a partial step."""
    if selected is None:
        return [selected_tokens(resp_len, transfer_ratio)] * (d.n_layers - 1)
    if isinstance(selected, int):
        return [selected] * (d.n_layers - 1)
    if len(selected) != d.n_layers:
        raise ValueError(f"selected has {len(selected)} per-layer counts for {d.n_layers} layers (entry 0 unused)")
    return list(selected[1:])


def step_flops(
    dims: ModelDims | Any,
    batch: int,
    prompt_len: int,
    resp_len: int,
    kind: str,
    transfer_ratio: float = 0.25,
    logits_tokens: int | dict[str, int] | None = None,
    selected: int | Sequence[int] | None = None,
    rows: int | None = None,
) -> int:
    """Matmul FLOPs of one model forward (one denoising step) of `kind`.

    `prompt_len` P and `resp_len` R are per batch row (padding included: padded positions
    are computed like real ones); `logits_tokens` is the number of positions per row that go
    through the LM head (default `lm_head_tokens(kind, P, R)`, what the cache does for a call
    that asks for every row; a dict gives it per step kind); `selected` the tokens recomputed per
    partial layer (default int(R * transfer_ratio)), or one count per layer (per-layer budgets,
    `CacheConfig.layer_counts`; entry 0 unused). A partial layer with nothing selected projects
    no V either (there is nothing to test); `rows` the rows a "block" step recomputes (required
    for it). See the module docstring for what each kind recomputes. Returns an exact integer.
    """
    d = _as_dims(dims)
    kind = _normalise_kind(kind)
    total = prompt_len + resp_len
    logits_tokens = _head_rows(logits_tokens, kind, prompt_len, resp_len)

    full_layer = total * d.flops_token_layer + d.attention_flops(total, total)
    response_layer = resp_len * d.flops_token_layer + d.attention_flops(resp_len, total)
    if kind == "block":
        if rows is None:
            raise ValueError("a 'block' step needs rows= (the rows it recomputes, see schedule.block_region)")
        layers = d.n_layers * (rows * d.flops_token_layer + d.attention_flops(rows, total))
    elif kind == "full":
        layers = d.n_layers * full_layer
    elif kind == "response":
        layers = d.n_layers * response_layer
    else:
        partial_layers = sum(
            (resp_len * d.flops_v if k else 0)
            + k * (d.flops_q + d.flops_k + d.flops_o + d.flops_ffn)
            + d.attention_flops(k, total)
            for k in _partial_counts(d, resp_len, transfer_ratio, selected)
        )
        if kind == "partial":
            layers = response_layer + partial_layers
        else:  # "prompt": prompt tokens recomputed on top of the partial response work
            prompt_layer = prompt_len * d.flops_token_layer + d.attention_flops(prompt_len, total)
            layers = full_layer + (d.n_layers - 1) * prompt_layer + partial_layers
    lm_head = logits_tokens * 2 * d.d_model * d.vocab
    return batch * (layers + lm_head)


def step_bytes(
    dims: ModelDims | Any,
    batch: int,
    prompt_len: int,
    resp_len: int,
    kind: str,
    transfer_ratio: float = 0.25,
    logits_tokens: int | dict[str, int] | None = None,
    dtype_bytes: int = 2,
    selected: int | Sequence[int] | None = None,
) -> int:
    """Minimum HBM bytes of one step of `kind`, for a roofline bound.

    Assumptions (a lower bound: ideal fusion, each weight read once per step):
    * weights: every layer's full weights are read on every step kind, because every kind
      runs at least one token through every projection of every layer (a partial step with
      k = int(R * ratio) = 0 reads only the V projection of layers 1..L-1); plus the LM head.
      Embedding rows gathered: batch * (P + R) * d_model.
    * K/V: each layer that runs attention reads K and V of all P + R keys per row (on a partial
      step, layer 0 and the layers that selected a token).
    * cached features on partial (and prompt-refresh) steps, layers 1..L-1: the cached V of
      the R response tokens (drift test, in the layers that select tokens: with k = 0 there is
      none) and their cached attention and FFN outputs (reuse, every layer). Block steps read
      K/V only.
    * logits written: batch * logits_tokens * vocab (the reused prompt rows' copy is ignored).
    Other activations are assumed to stay on chip. All tensors in `dtype_bytes` per element.
    """
    d = _as_dims(dims)
    kind = _normalise_kind(kind)
    total = prompt_len + resp_len
    logits_tokens = _head_rows(logits_tokens, kind, prompt_len, resp_len)

    weights = d.n_layers * d.params_layer + d.params_lm_head
    attending = d.n_layers
    cached = 0
    if kind in ("partial", "prompt"):
        verifying = sum(1 for k in _partial_counts(d, resp_len, transfer_ratio, selected) if k)  # layers 1..L-1 with k > 0
        cached = batch * resp_len * (verifying * d.kv_dim + (d.n_layers - 1) * 2 * d.d_model)
        if kind == "partial":  # a layer past the first with nothing selected only adds its cached deltas
            weights = (1 + verifying) * d.params_layer + d.params_lm_head
            attending = 1 + verifying
    kv_reads = batch * attending * total * 2 * d.kv_dim
    embed = batch * total * d.d_model
    logits = batch * logits_tokens * d.vocab
    return dtype_bytes * (weights + kv_reads + cached + embed + logits)


def roofline_seconds(flops: int, nbytes: int, peak_tflops: float, peak_tbps: float) -> float:
    """max(compute time, memory time) at the given peak FLOP/s (1e12) and bandwidth (1e12 B/s)."""
    return max(flops / (peak_tflops * 1e12), nbytes / (peak_tbps * 1e12))


def _local_step_kind(step: int, config: CacheConfig) -> str:
    """Fallback schedule rule (same as `dllm_cache.engine.schedule`), used only if that is missing."""
    kp = config.prompt_interval
    prompt = step == 0 if kp is None else step % kp == 0
    response = step % config.response_interval == 0
    if prompt:
        return "full" if response else "prompt"
    return "response" if response else "partial"


def step_kind(step: int, config: CacheConfig | None) -> str:
    """Which kind of forward the cache runs at denoising step `step` (0-based).

    None = no cache = "full" every step. Delegates to `dllm_cache.engine.schedule.step_kind` so the
    FLOPs model and the cache can never disagree.
    """
    if config is None:
        return "full"
    if config.is_block:
        raise ValueError(f"policy={config.policy!r}: step kinds follow the decoded blocks, not the step index; "
                         "use block_schedule (or generation_cost with steps_per_block).")
    if config.drift_triggered:
        raise ValueError("response_drift_threshold: response refreshes follow the measured drift, not the step "
                         "index; count the steps a run took (cache_stats) and pass them to generation_cost as "
                         "step_counts.")
    try:
        from dllm_cache.engine.schedule import step_kind as schedule_step_kind
    except ImportError:  # core not installed yet; same rule as DESIGN.md
        schedule_step_kind = _local_step_kind
    return schedule_step_kind(step, config)


def schedule_counts(steps: int, config: CacheConfig | None) -> dict[str, int]:
    """Number of steps of each kind over `steps` denoising steps of the feature cache (uncached:
    all "full"); block policies depend on the blocks, see `block_schedule`."""
    counts = Counter(step_kind(s, config) for s in range(steps))
    return {kind: counts.get(kind, 0) for kind in FEATURE_KINDS}


@dataclass(frozen=True)
class GenerationCost:
    """Totals over one generation; `roofline_s` is None when no peaks were given."""

    flops: int
    bytes: int
    step_counts: dict[str, int]
    flops_per_kind: dict[str, int]
    bytes_per_kind: dict[str, int]
    roofline_s: float | None = None


def sampler_logit_rows(prompt_len: int, block: int, block_length: int, logit_shift: int) -> tuple[int, int]:
    """Rows [lo, hi) whose logits our samplers ask for while decoding `block`: LLaDA the block's
    rows; Dream (logit_shift 1) the rows predicting them, one earlier (at the very start of the
    sequence row 0 stands in for itself, so one row fewer is asked)."""
    lo = prompt_len + block * block_length
    if lo - logit_shift >= 0:
        return lo - logit_shift, lo + block_length - logit_shift
    return 0, max(lo + block_length - logit_shift, 1)


def block_schedule(
    config: CacheConfig, prompt_len: int, gen_len: int, block_length: int | None, steps_per_block: list[int],
    logit_shift: int = 0,
) -> list[tuple[str, int | None, int]]:
    """(kind, recomputed rows or None, logit rows asked) of every step of a generation under a block
    policy, as the engine plans it for our samplers (`schedule.plan_block_step`): a full refresh on
    each block's first step and every `block_refresh` steps, block steps in between."""
    from dllm_cache.engine.schedule import block_region, plan_block_step

    B = block_length or gen_len
    seq = prompt_len + gen_len
    out = []
    for b, n in enumerate(steps_per_block):
        asked = sampler_logit_rows(prompt_len, b, B, logit_shift)
        region = block_region(asked, seq, logit_shift, config.policy)
        since: int | None = None
        for _ in range(n):
            plan = plan_block_step(since, config, region)
            rows = None if plan.rows is None else plan.rows[1] - plan.rows[0]
            out.append((plan.kind, rows, asked[1] - asked[0]))
            since = 1 if plan.kind == "full" else since + 1
    return out


def generation_cost(
    dims: ModelDims | Any,
    batch: int,
    prompt_len: int,
    gen_len: int,
    steps: int,
    config: CacheConfig | None,
    block_length: int | None = None,
    logits_tokens: int | dict[str, int] | None = None,
    dtype_bytes: int = 2,
    peak_tflops: float | None = None,
    peak_tbps: float | None = None,
    steps_per_block: list[int] | None = None,
    step_counts: Mapping[str, float] | None = None,
) -> GenerationCost:
    """FLOPs, bytes and (optionally) roofline time of a whole generation.

    The response is the whole generated region (R = gen_len) on every step, whatever the
    semi-autoregressive block: every step runs the full sequence. `block_length` (the sampler's,
    None for Dream without blocks) sets the "frontier" selection's window, hence its count with
    `frontier_only`, and the blocks of the block policies. With `shifted_row="response"` on a
    shifted model the cache's response region starts one row earlier (P - 1 prompt rows, R + 1
    response rows). `config` None = uncached (every step "full").

    `steps_per_block`: the steps each block took (parallel decoding, a replayed trace); default
    `steps` spread evenly over the blocks. Block policies: their cost depends on it (a refresh per
    block), and the LM head computes the rows our samplers ask for unless `logits_tokens` says
    otherwise; `flops_per_kind` / `bytes_per_kind` are then the mean over that kind's steps.

    `step_counts`: steps of each feature-cache kind a run took (e.g. cache_stats' counts divided
    by its generations; fractions allowed) instead of the schedule's; required with
    `response_drift_threshold`, whose refreshes follow the measured drift. `layer_ratios`: each
    layer's own count of recomputed tokens.
    """
    if block_length is not None and (block_length <= 0 or gen_len % block_length):
        raise ValueError(f"gen_len {gen_len} must be a multiple of block_length {block_length}")
    if steps_per_block is not None:
        steps = sum(steps_per_block)
    if config is not None and config.is_block:
        return _block_generation_cost(dims, batch, prompt_len, gen_len, steps, config, block_length, logits_tokens,
                                      dtype_bytes, peak_tflops, peak_tbps, steps_per_block)
    ratio = config.transfer_ratio if config is not None else 1.0
    P, R = prompt_len, gen_len
    if config is not None and config.shifted_row == "response" and P > 0:
        shift = _as_dims(dims).logit_shift
        P, R = P - shift, R + shift
    selected = config.layer_counts(R, _as_dims(dims).n_layers, block_length) if config is not None else None
    counts = schedule_counts(steps, config) if step_counts is None else {k: step_counts.get(k, 0) for k in FEATURE_KINDS}
    flops_k: dict[str, int] = {}
    bytes_k: dict[str, int] = {}
    for kind in FEATURE_KINDS:
        flops_k[kind] = step_flops(dims, batch, P, R, kind, ratio, logits_tokens, selected)
        bytes_k[kind] = step_bytes(dims, batch, P, R, kind, ratio, logits_tokens, dtype_bytes, selected)
    roofline = None
    if peak_tflops and peak_tbps:
        roofline = sum(
            n * roofline_seconds(flops_k[k], bytes_k[k], peak_tflops, peak_tbps)
            for k, n in counts.items()
        )
    return GenerationCost(
        flops=sum(n * flops_k[k] for k, n in counts.items()),
        bytes=sum(n * bytes_k[k] for k, n in counts.items()),
        step_counts=counts,
        flops_per_kind=flops_k,
        bytes_per_kind=bytes_k,
        roofline_s=roofline,
    )


def _block_generation_cost(dims, batch, P, R, steps, config, block_length, logits_tokens, dtype_bytes, peak_tflops,
                           peak_tbps, steps_per_block) -> GenerationCost:
    """generation_cost under a block policy: summed step by step (block steps differ by block)."""
    d = _as_dims(dims)
    n_blocks = R // (block_length or R)
    if steps_per_block is None:
        if steps % n_blocks:
            raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({n_blocks})")
        steps_per_block = [steps // n_blocks] * n_blocks
    counts = dict.fromkeys(STEP_KINDS, 0)
    flops_k = dict.fromkeys(STEP_KINDS, 0)
    bytes_k = dict.fromkeys(STEP_KINDS, 0)
    total_flops = total_bytes = 0
    roofline = 0.0
    for kind, rows, asked in block_schedule(config, P, R, block_length, steps_per_block, d.logit_shift):
        head = asked if logits_tokens is None else logits_tokens
        f = step_flops(d, batch, P, R, kind, logits_tokens=head, rows=rows)
        b = step_bytes(d, batch, P, R, kind, logits_tokens=head, dtype_bytes=dtype_bytes)
        counts[kind] += 1
        flops_k[kind] += f
        bytes_k[kind] += b
        total_flops += f
        total_bytes += b
        if peak_tflops and peak_tbps:
            roofline += roofline_seconds(f, b, peak_tflops, peak_tbps)
    for kind, n in counts.items():
        if n:
            flops_k[kind] //= n
            bytes_k[kind] //= n
    return GenerationCost(flops=total_flops, bytes=total_bytes, step_counts=counts, flops_per_kind=flops_k,
                          bytes_per_kind=bytes_k, roofline_s=roofline if peak_tflops and peak_tbps else None)


def generation_flops(
    dims: ModelDims | Any,
    batch: int,
    prompt_len: int,
    gen_len: int,
    steps: int,
    config: CacheConfig | None,
    block_length: int | None = None,
) -> int:
    """Total FLOPs of a generation under the cache schedule; `config` None = uncached."""
    return generation_cost(dims, batch, prompt_len, gen_len, steps, config, block_length).flops


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T plus the weighted sum, on the query heads (GQA-safe: K/V may have fewer heads)."""
    batch, q_heads, q_len, head_dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * q_heads * q_len * k_len * (head_dim + v_dim)


def _extra_flop_formulas() -> dict[Any, Any]:
    """Our formula for every fused attention op F.scaled_dot_product_attention can pick.

    Two reasons: on CPU it dispatches to `_scaled_dot_product_flash_attention_for_cpu`, which
    FlopCounterMode does not register; and torch releases before the GQA fix of its
    `sdpa_flop_count` (2026) assert when K/V have fewer heads than Q (Dream: 28 vs 4).
    All these ops take (query, key, value, ...) first. Nested kernels are not double counted:
    FlopCounterMode only sees the op it was handed.
    """
    aten = torch.ops.aten
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    return {getattr(aten, n): _sdpa_flops for n in names if hasattr(aten, n)}


def count_forward_flops(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[int, Any]:
    """Run one forward under FlopCounterMode; return (FLOPs, the model's output)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with torch.no_grad(), counter:
        if attention_mask is None:
            output = model(input_ids)
        else:
            output = model(input_ids, attention_mask=attention_mask)
    return int(counter.get_total_flops()), output


def measure_step_flops(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> int:
    """FLOPs of one uncached forward, counted by `torch.utils.flop_counter.FlopCounterMode`.

    Counts matmuls (mm/addmm/bmm/baddbmm) and scaled-dot-product attention, i.e. the same
    things as `step_flops(..., "full")`. Run it with the cache disabled.
    """
    return count_forward_flops(model, input_ids, attention_mask)[0]
