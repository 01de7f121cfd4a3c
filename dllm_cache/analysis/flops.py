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
* Mixture of experts (LLaDA-MoE, LLaDA 2.x): a routed layer charges per token its router
  (2 * d_model * n_experts), its top-k routed experts (k * 3 * 2 * d_model * d_expert) and the
  shared experts (3 * 2 * d_model * d_shared); its dense layers (LLaDA 2.x: the first
  first_k_dense_replace, LLaDA-MoE: moe_layer_freq 0) the dense FFN. Top-k routing sends every
  token to exactly k experts, so the count does not depend on the routing, provided the experts
  run on their routed tokens only (a loop over experts on the tokens each was picked by, as ours
  and the official modelling code do; a kernel that ran every expert on every token would cost
  n_experts / k times more). Routing itself (softmax or sigmoid, group top-k) is not counted.
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
          work, only how many steps of each kind a generation takes. A fused Q/K/V projection
          that computes all three whenever it runs (`ModelDims.fused_qkv`) makes the drift test
          cost Q, K and V of the R rows, and the k selected rows pay for Q, K and V again. LLaDA
          2.x's query_key_value is fused but not costed so: hooks/llada2.py runs the V rows of its
          weight alone for the drift test and the Q and K rows for the selected tokens.
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
BLOCK_CAUSAL_MODEL_TYPES = ("llada2_moe",)  # attention causal across blocks: decoded by dllm_cache.sampling.llada2
FUSED_QKV_MODEL_TYPES: tuple[str, ...] = ()  # none: hooks/llada2.py slices LLaDA 2.x's query_key_value per use


def _get(config: Any, *keys: str, default: Any = None) -> Any:
    """First non-None value among `keys` on a config object or dict."""
    for key in keys:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class ModelDims:
    """The few numbers FLOPs depend on, normalised across LLaDA, Dream/Qwen2 and mixture-of-experts configs.

    A mixture of experts (LLaDA-MoE, LLaDA 2.x) adds the MoE fields: `moe_layers` are the layers whose FFN is
    routed (the others keep the dense FFN of width `d_ff`); each routed layer has a router (d_model ->
    n_experts), `n_experts` experts of width `d_expert` of which every token runs `experts_per_tok`, and shared
    experts of total width `d_shared` that every token runs. A dense model leaves them 0 / ().
    """

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int  # the dense FFN's width (an MoE model's dense layers)
    vocab: int  # width of the LM head (LLaDA: embedding_size, which pads vocab_size)
    logit_shift: int = 0  # 1 when logits at row i predict token i + 1 (Dream)
    n_experts: int = 0  # routed experts per MoE layer
    experts_per_tok: int = 0  # top-k: routed experts each token runs
    d_expert: int = 0  # one routed expert's FFN width (moe_intermediate_size / expert_intermediate_size)
    d_shared: int = 0  # the shared experts' total FFN width (0: none)
    moe_layers: tuple[int, ...] = ()  # indices of the routed layers
    block_causal: bool = False  # block diffusion (LLaDA 2.x): decoded block by block, see generation_cost
    fused_qkv: bool = False  # one Q/K/V projection computed whole whenever it runs: see step_flops' partial kind

    def __post_init__(self) -> None:
        if self.moe_layers and not (0 < self.experts_per_tok <= self.n_experts and self.d_expert > 0):
            raise ValueError(f"MoE layers {self.moe_layers} need 0 < experts_per_tok <= n_experts and d_expert > 0, got "
                             f"experts_per_tok={self.experts_per_tok}, n_experts={self.n_experts}, d_expert={self.d_expert}")
        if any(not 0 <= i < self.n_layers for i in self.moe_layers):
            raise ValueError(f"moe_layers {self.moe_layers} must be layer indices in [0, {self.n_layers})")

    @classmethod
    def from_config(cls, config: Any, allow_moe: bool = True) -> ModelDims:
        """Read dims from a LLaDA, Dream/Qwen2, LLaDA-MoE or LLaDA 2.x config (object or dict).

        LLaDA keys: d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size (or mlp_ratio),
        embedding_size / vocab_size. Dream keys: hidden_size, num_attention_heads,
        num_key_value_heads, num_hidden_layers, intermediate_size, vocab_size.
        Mixture of experts (`num_experts` set): LLaDA-MoE's dense_intermediate_size,
        expert_intermediate_size, shared_expert_intermediate_size and moe_layer_freq (a 0/1 entry per
        layer); LLaDA 2.x's intermediate_size, moe_intermediate_size, num_shared_experts (shared width =
        num_shared_experts * moe_intermediate_size) and first_k_dense_replace (the first k layers dense);
        both with num_experts_per_tok. `allow_moe` False refuses MoE configs (kept for callers that
        predate the MoE model).
        """
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
        d_ff = _get(config, "mlp_hidden_size", "dense_intermediate_size", "intermediate_size")
        if d_ff is None:
            d_ff = int(_get(config, "mlp_ratio", default=4) * d_model)
        vocab = _get(config, "embedding_size", "vocab_size")
        if vocab is None:
            raise ValueError(f"{type(config).__name__} has neither embedding_size nor vocab_size")
        moe = _moe_dims(config, int(n_layers)) if _get(config, "num_experts") is not None else {}
        if moe and not allow_moe:
            raise ValueError(f"{type(config).__name__} is a mixture-of-experts config and allow_moe is False.")
        return cls(
            d_model=int(d_model),
            n_layers=int(n_layers),
            n_heads=int(n_heads),
            n_kv_heads=int(n_kv_heads),
            head_dim=int(head_dim),
            d_ff=int(d_ff),
            vocab=int(vocab),
            logit_shift=int("dream" in str(_get(config, "model_type", default="")).lower()),
            block_causal=str(_get(config, "model_type", default="")).lower() in BLOCK_CAUSAL_MODEL_TYPES,
            fused_qkv=str(_get(config, "model_type", default="")).lower() in FUSED_QKV_MODEL_TYPES,
            **moe,
        )

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layers)

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
    def flops_attn_proj(self) -> int:
        """q/k/v/o projections of one token in one layer."""
        return self.flops_q + self.flops_k + self.flops_v + self.flops_o

    @property
    def flops_ffn(self) -> int:
        """The dense gated FFN of one token (every layer of a dense model; see `ffn_flops` per layer)."""
        return 3 * 2 * self.d_model * self.d_ff

    def ffn_flops(self, layer: int) -> int:
        """FFN of one token in `layer`: the dense FFN, or in a routed layer the router (d_model ->
        n_experts), its top-k experts and the shared experts. Top-k routing sends every token to exactly
        `experts_per_tok` experts, so this does not depend on the routing."""
        if layer not in self.moe_layers:
            return self.flops_ffn
        return 2 * self.d_model * (self.n_experts + 3 * (self.experts_per_tok * self.d_expert + self.d_shared))

    def layer_flops(self, layer: int) -> int:
        """Projections + FFN of one token in `layer` (attention scores excluded)."""
        return self.flops_attn_proj + self.ffn_flops(layer)

    @property
    def flops_token_layer(self) -> int:
        """Projections + dense FFN of one token in one layer (every layer of a dense model)."""
        return self.flops_attn_proj + self.flops_ffn

    @property
    def flops_token(self) -> int:
        """Projections + FFN of one token through every layer (LM head and attention scores excluded)."""
        return sum(self.layer_flops(i) for i in range(self.n_layers))

    def attention_flops(self, n_queries: int, n_keys: int) -> int:
        """Q K^T and the weighted sum with V for one batch row, one layer."""
        return 2 * 2 * n_queries * n_keys * self.head_dim * self.n_heads

    # Parameter counts (weights read from memory), per layer and for the LM head.
    @property
    def params_v(self) -> int:
        return self.d_model * self.kv_dim

    @property
    def params_layer(self) -> int:
        """Weights of one dense layer (every layer of a dense model; see `layer_params` per layer)."""
        return self.flops_token_layer // 2

    def layer_params(self, layer: int, experts: float | None = None) -> int:
        """Weights of `layer`: attention and its FFN; in a routed layer the router, the shared experts and
        `experts` routed experts (default all of them: what the layer holds)."""
        if layer not in self.moe_layers:
            return self.params_layer
        n = self.n_experts if experts is None else experts
        routed = round(n * 3 * self.d_model * self.d_expert)
        return self.flops_attn_proj // 2 + self.d_model * (self.n_experts + 3 * self.d_shared) + routed

    @property
    def params_layers(self) -> int:
        """Weights of all layers (every expert included): what the model holds besides embedding and head."""
        return sum(self.layer_params(i) for i in range(self.n_layers))

    @property
    def active_params_layers(self) -> int:
        """Weights one token multiplies by across the layers (routed layers: its top-k experts only)."""
        return self.flops_token // 2

    @property
    def params_lm_head(self) -> int:
        return self.d_model * self.vocab

    def experts_read(self, tokens: int) -> float:
        """Expected distinct routed experts `tokens` tokens reach in one routed layer, each choosing
        `experts_per_tok` of `n_experts` uniformly: n_experts * (1 - (1 - k / n_experts) ** tokens).
        A trained router with balanced load is close to this; a skewed one reads fewer."""
        if not self.n_experts or tokens <= 0:
            return 0.0
        return self.n_experts * (1.0 - (1.0 - self.experts_per_tok / self.n_experts) ** tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _moe_dims(config: Any, n_layers: int) -> dict[str, Any]:
    """The MoE fields of ModelDims from a LLaDA-MoE or LLaDA 2.x config (see ModelDims.from_config)."""
    d_expert = _get(config, "moe_intermediate_size", "expert_intermediate_size")
    top_k = _get(config, "num_experts_per_tok")
    if d_expert is None or top_k is None:
        raise ValueError(
            f"{type(config).__name__} has num_experts but not num_experts_per_tok and moe_intermediate_size "
            "(LLaDA 2.x) or expert_intermediate_size (LLaDA-MoE): cannot count its routed experts."
        )
    shared = _get(config, "shared_expert_intermediate_size")
    if shared is None:
        shared = int(_get(config, "num_shared_experts", default=0)) * int(d_expert)
    freq = _get(config, "moe_layer_freq")
    first_dense = _get(config, "first_k_dense_replace")
    if freq is not None and first_dense is not None:
        raise ValueError(f"{type(config).__name__} has both moe_layer_freq and first_k_dense_replace: which layers route?")
    if freq is not None:
        if isinstance(freq, int) or len(freq) != n_layers:
            raise ValueError(f"moe_layer_freq must be one 0/1 entry per layer ({n_layers}), got {freq!r}")
        moe_layers = tuple(i for i, f in enumerate(freq) if f)
    else:
        moe_layers = tuple(range(int(first_dense or 0), n_layers))
    return dict(n_experts=int(_get(config, "num_experts")), experts_per_tok=int(top_k), d_expert=int(d_expert),
                d_shared=int(shared), moe_layers=moe_layers)


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

    def every_layer(tokens: int) -> int:  # `tokens` through every layer, their queries against all keys
        return tokens * d.flops_token + d.n_layers * d.attention_flops(tokens, total)

    if kind == "block":
        if rows is None:
            raise ValueError("a 'block' step needs rows= (the rows it recomputes, see schedule.block_region)")
        layers = every_layer(rows)
    elif kind == "full":
        layers = every_layer(total)
    elif kind == "response":
        layers = every_layer(resp_len)
    else:
        # V of all R rows for the drift test, then Q/K for the k selected; a fused projection computes
        # Q, K and V whenever it runs (once for the R rows, again for the k gathered rows).
        verify, select = (d.flops_q + d.flops_k + d.flops_v,) * 2 if d.fused_qkv else (d.flops_v, d.flops_q + d.flops_k)
        partial_layers = sum(
            (resp_len * verify if k else 0)
            + k * (select + d.flops_o + d.ffn_flops(i))
            + d.attention_flops(k, total)
            for i, k in enumerate(_partial_counts(d, resp_len, transfer_ratio, selected), start=1)
        )
        if kind == "partial":  # layer 0 as on a response step
            layers = resp_len * d.layer_flops(0) + d.attention_flops(resp_len, total) + partial_layers
        else:  # "prompt": layer 0 full, the prompt tokens recomputed on top of the partial response work
            layers = total * d.layer_flops(0) + d.attention_flops(total, total) + partial_layers + sum(
                prompt_len * d.layer_flops(i) + d.attention_flops(prompt_len, total) for i in range(1, d.n_layers)
            )
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
    rows: int | None = None,
) -> int:
    """Minimum HBM bytes of one step of `kind`, for a roofline bound.

    Assumptions (a lower bound: ideal fusion, each weight read once per step):
    * weights: every layer's full weights are read on every step kind, because every kind
      runs at least one token through every projection of every layer (a partial step with
      k = int(R * ratio) = 0 reads only the V projection of layers 1..L-1); plus the LM head.
      Embedding rows gathered: batch * (P + R) * d_model. A routed (MoE) layer reads its
      attention, router and shared experts, and of its routed experts the expected number the
      step's tokens reach (`ModelDims.experts_read`: uniform routing; all of them once
      batch * tokens * top-k is well past n_experts). `rows`: a "block" step's recomputed rows
      (only routed layers depend on it; default R).
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

    # Tokens per row through each layer's FFN; None: the layer reads no weights this step.
    ffn_tokens: list[int | None] = [{"full": total, "response": resp_len, "prompt": total, "partial": resp_len,
                                     "block": resp_len if rows is None else rows}[kind]] * d.n_layers
    attending = d.n_layers
    cached = 0
    if kind in ("partial", "prompt"):
        counts = _partial_counts(d, resp_len, transfer_ratio, selected)  # layers 1..L-1
        verifying = sum(1 for k in counts if k)  # layers 1..L-1 with k > 0
        cached = batch * resp_len * (verifying * d.kv_dim + (d.n_layers - 1) * 2 * d.d_model)
        if kind == "partial":  # a layer past the first with nothing selected only adds its cached deltas
            ffn_tokens[1:] = [k if k else None for k in counts]
            attending = 1 + verifying
        else:
            ffn_tokens[1:] = [prompt_len + k for k in counts]
    weights = d.params_lm_head + sum(
        d.layer_params(i, d.experts_read(batch * n) if d.is_moe else None)
        for i, n in enumerate(ffn_tokens) if n is not None
    )
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


def feature_kinds(steps: int, config: CacheConfig | None,
                  committed: Sequence[Sequence[int]] | None = None) -> list[str]:
    """Kind of each of `steps` denoising steps of the feature cache, as the engine plans them for our
    samplers (uncached: all "full"). `committed[s][r]`: tokens row r committed at step s, as a
    threshold / factor sampler or a replay reports them (`dllm_cache.sampling.trace.committed_per_step`
    of a trace), which response_clock "tokens" counts; None: the step clock alone (the fixed schedule)."""
    if committed is None or config is None or not config.counts_tokens:
        return [step_kind(s, config) for s in range(steps)]
    if config.drift_triggered:
        step_kind(0, config)  # raises: refreshes follow the measured drift
    from dllm_cache.engine.schedule import feature_plans

    return [plan.kind for plan in feature_plans(config, steps, committed)]


def schedule_counts(steps: int, config: CacheConfig | None,
                    committed: Sequence[Sequence[int]] | None = None) -> dict[str, int]:
    """Number of steps of each kind over `steps` denoising steps of the feature cache (uncached:
    all "full"; `committed`: see `feature_kinds`); block policies depend on the blocks, see
    `block_schedule`."""
    counts = Counter(feature_kinds(steps, config, committed))
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
    policy, as the engine plans it for our samplers (`schedule.plan_block_step`): block_start "full",
    a full refresh on each block's first step and every `block_refresh` steps, block steps in between;
    "incremental", a full refresh every `prompt_interval` steps of the generation, the last block and
    the new one recomputed together on a block's first step."""
    from dllm_cache.engine.schedule import block_region, plan_block_step

    B = block_length or gen_len
    seq = prompt_len + gen_len
    out = []
    step = 0
    previous: tuple[int, int] | None = None  # the last block's region
    for b, n in enumerate(steps_per_block):
        asked = sampler_logit_rows(prompt_len, b, B, logit_shift)
        region = block_region(asked, seq, logit_shift, config.policy)
        since: int | None = None
        for _ in range(n):
            plan = plan_block_step(since, config, region, step, previous)
            rows = None if plan.rows is None else plan.rows[1] - plan.rows[0]
            out.append((plan.kind, rows, asked[1] - asked[0]))
            since = 1 if since is None or plan.kind == "full" else since + 1
            step += 1
        if n:
            previous = region
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
    committed: Sequence[Sequence[int]] | None = None,
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

    `committed`: tokens each batch row committed at each step (`committed[s][r]`; from a trace:
    `dllm_cache.sampling.trace.committed_per_step`), which the feature cache's response_clock "tokens"
    counts (`feature_kinds`); None: the step clock, as for the fixed schedule.

    `step_counts`: steps of each feature-cache kind a run took (e.g. cache_stats' counts divided
    by its generations; fractions allowed) instead of the schedule's; required with
    `response_drift_threshold`, whose refreshes follow the measured drift. `layer_ratios`: each
    layer's own count of recomputed tokens.

    A block-diffusion model (`dims.block_causal`, LLaDA 2.x) is costed as its sampler runs it
    (`_block_causal_generation_cost`): `block_length` is required, `steps_per_block` counts the
    decoded blocks' forwards (fewer blocks after an end-of-text stop).
    """
    if steps_per_block is not None:
        steps = sum(steps_per_block)
    if _as_dims(dims).block_causal:
        return _block_causal_generation_cost(_as_dims(dims), batch, prompt_len, gen_len, steps, config, block_length,
                                             logits_tokens, dtype_bytes, peak_tflops, peak_tbps, steps_per_block)
    if block_length is not None and (block_length <= 0 or gen_len % block_length):
        raise ValueError(f"gen_len {gen_len} must be a multiple of block_length {block_length}")
    if config is not None and config.is_block:
        return _block_generation_cost(dims, batch, prompt_len, gen_len, steps, config, block_length, logits_tokens,
                                      dtype_bytes, peak_tflops, peak_tbps, steps_per_block)
    ratio = config.transfer_ratio if config is not None else 1.0
    P, R = prompt_len, gen_len
    if config is not None and config.shifted_row == "response" and P > 0:
        shift = _as_dims(dims).logit_shift
        P, R = P - shift, R + shift
    selected = config.layer_counts(R, _as_dims(dims).n_layers, block_length) if config is not None else None
    counts = (schedule_counts(steps, config, committed) if step_counts is None
              else {k: step_counts.get(k, 0) for k in FEATURE_KINDS})
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


class _StepTally:
    """A generation's cost summed step by step, for schedules whose steps of one kind differ in size (block
    policies, block diffusion): totals, counts, the mean FLOPs / bytes per kind, and the roofline summed over
    steps when both peaks are given."""

    def __init__(self, peak_tflops: float | None, peak_tbps: float | None) -> None:
        self.peaks = (peak_tflops, peak_tbps) if peak_tflops and peak_tbps else None
        self.counts = dict.fromkeys(STEP_KINDS, 0)
        self.flops_k = dict.fromkeys(STEP_KINDS, 0)
        self.bytes_k = dict.fromkeys(STEP_KINDS, 0)
        self.roofline = 0.0

    def add(self, kind: str, flops: int, nbytes: int) -> None:
        self.counts[kind] += 1
        self.flops_k[kind] += flops
        self.bytes_k[kind] += nbytes
        if self.peaks:
            self.roofline += roofline_seconds(flops, nbytes, *self.peaks)

    def cost(self) -> GenerationCost:
        mean = {k: n or 1 for k, n in self.counts.items()}  # kinds never run keep 0
        return GenerationCost(flops=sum(self.flops_k.values()), bytes=sum(self.bytes_k.values()),
                              step_counts=dict(self.counts),
                              flops_per_kind={k: v // mean[k] for k, v in self.flops_k.items()},
                              bytes_per_kind={k: v // mean[k] for k, v in self.bytes_k.items()},
                              roofline_s=self.roofline if self.peaks else None)


def _block_generation_cost(dims, batch, P, R, steps, config, block_length, logits_tokens, dtype_bytes, peak_tflops,
                           peak_tbps, steps_per_block) -> GenerationCost:
    """generation_cost under a block policy: summed step by step (block steps differ by block)."""
    d = _as_dims(dims)
    n_blocks = R // (block_length or R)
    if steps_per_block is None:
        if steps % n_blocks:
            raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({n_blocks})")
        steps_per_block = [steps // n_blocks] * n_blocks
    tally = _StepTally(peak_tflops, peak_tbps)
    for kind, rows, asked in block_schedule(config, P, R, block_length, steps_per_block, d.logit_shift):
        head = asked if logits_tokens is None else logits_tokens
        tally.add(kind, step_flops(d, batch, P, R, kind, logits_tokens=head, rows=rows),
                  step_bytes(d, batch, P, R, kind, logits_tokens=head, dtype_bytes=dtype_bytes, rows=rows))
    return tally.cost()


def _block_causal_generation_cost(d: ModelDims, batch, P, R, steps, config, block_length, logits_tokens, dtype_bytes,
                                  peak_tflops, peak_tbps, steps_per_block) -> GenerationCost:
    """generation_cost of a block-diffusion model (LLaDA 2.x) as `dllm_cache.sampling.llada2` runs it.

    The sequence is P + R columns rounded up to whole blocks of `block_length` B aligned at column 0;
    decoding starts at the block holding the prompt's end. Uncached, each step of the block [lo, lo + B)
    runs the model on columns [0, lo + B) with the block-causal mask (every row, LM head on every row):
    a "full" step of lo + B tokens (a mask does not change FlopCounterMode's count of the attention).
    Cached (`dllm_cache.engine.block_causal`), a block's first step runs, in one pass, the columns not
    committed yet (the prompt's whole blocks, or the previous block) and the block itself: those rows
    through every layer, their queries against all keys up to the block's end, the LM head on the B block
    rows (counted as a "response" step). Its other steps run the block's B rows against the lo + B keys:
    "response" steps (all rows; every step of the exact block cache), or with the feature cache (policy
    "feature", response_interval > 1) "partial" steps between the block's refreshes, with
    `CacheConfig.layer_counts(B, ...)` rows per layer; the LM head on the B rows. `steps_per_block`:
    forwards of each decoded block (default `steps` spread evenly over all blocks).
    """
    if block_length is None or block_length <= 0:
        raise ValueError("a block-diffusion model (LLaDA 2.x) decodes block by block: pass block_length (its "
                         "sampler's block_length, 32 by default)")
    B = block_length
    first, n_blocks = P // B, -(-(P + R) // B)
    if steps_per_block is None:
        if steps % (n_blocks - first):
            raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks decoded ({n_blocks - first}), "
                             "or pass steps_per_block")
        steps_per_block = [steps // (n_blocks - first)] * (n_blocks - first)
    if len(steps_per_block) > n_blocks - first:
        raise ValueError(f"steps_per_block has {len(steps_per_block)} blocks; prompt {P} + gen {R} in blocks of {B} "
                         f"decodes {n_blocks - first}")
    feature = config is not None and not config.is_block and config.response_interval != 1
    selected = config.layer_counts(B, d.n_layers, B) if config is not None else None
    tally = _StepTally(peak_tflops, peak_tbps)
    committed = 0
    for j, n in enumerate(steps_per_block):
        lo = (first + j) * B
        for i in range(n):
            if config is None:
                kind, head = "full", _head_rows(logits_tokens, "full", 0, lo + B)
                f = step_flops(d, batch, 0, lo + B, kind, logits_tokens=head)
                b = step_bytes(d, batch, 0, lo + B, kind, logits_tokens=head, dtype_bytes=dtype_bytes)
            else:
                kind = "partial" if feature and i % config.response_interval else "response"
                head = B if logits_tokens is None else _head_rows(logits_tokens, kind, lo, B)
                if i == 0:  # the columns not committed yet and the block, in one pass
                    rows = lo + B - committed
                    f = step_flops(d, batch, committed, rows, "block", logits_tokens=head, rows=rows)
                    b = step_bytes(d, batch, committed, rows, "block", logits_tokens=head, dtype_bytes=dtype_bytes,
                                   rows=rows)
                    committed = lo
                else:
                    f = step_flops(d, batch, lo, B, kind, logits_tokens=head, selected=selected)
                    b = step_bytes(d, batch, lo, B, kind, logits_tokens=head, dtype_bytes=dtype_bytes,
                                   selected=selected)
            tally.add(kind, f, b)
    return tally.cost()


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
