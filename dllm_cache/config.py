"""CacheConfig: the knobs of the method and of the refresh policy, validated at construction."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from .kv_store import KV_CACHE_DTYPES as _STORED_KV_DTYPES

POLICIES = ("feature", "block-prefix", "block-dual")
SELECTIONS = ("paper", "frontier")
SHIFTED_ROWS = ("prompt", "response")
KV_CACHE_DTYPES = (None, *_STORED_KV_DTYPES)  # None: K/V in the model's dtype (exact); see dllm_cache.kv_store
# Decoding window of the frontier selection when the sampler declared no semi-AR block (Dream).
DEFAULT_FRONTIER_WINDOW = 32


@dataclass(frozen=True)
class CacheConfig:
    """Which cache, how often it is refreshed, and which tokens are recomputed between refreshes.

    policy: the family of cache.
        "feature" (default): the dLLM-Cache method. Per token and layer the attention and FFN
        outputs are reused; prompt_interval, response_interval, transfer_ratio, cfg_interval and the
        selection fields below say what is refreshed when.
        "block-prefix" / "block-dual": Fast-dLLM's block KV cache. Only K and V are reused. A full
        forward refreshes them at the start of every semi-autoregressive block (the rows the sampler
        asks logits for change) and every `block_refresh` steps; in between, "block-prefix"
        recomputes the decoded block and everything after it, "block-dual" the decoded block only
        (the K/V after it are reused too). The decoded block is the rows the sampler asks logits
        for (`logits_to_keep`; on shifted models such as Dream, also the tokens those rows predict):
        ask for all rows and every row is recomputed. prompt_interval, response_interval,
        transfer_ratio, cfg_interval and shifted_row do not apply.
    block_refresh: block policies only: also refresh every N steps within a block (1 = every step,
        which equals the uncached model); None (default) = at block starts only, as Fast-dLLM.

    prompt_interval (Kp): prompt tokens' K/V, attention and FFN outputs are recomputed
        every Kp denoising steps and reused in between. None: only on the first step of a
        generation. The prompt tokens never change during a generation; only their attention
        to the response does, so with a short response and a long prompt refreshing it buys
        little and costs a full forward.
    response_interval (Kr): all response tokens are recomputed every Kr steps.
    transfer_ratio: on the steps in between, this fraction of response tokens (those whose
        Value vectors drifted most, by cosine similarity) is recomputed; int(R * ratio) per row.
    cfg_interval: response interval for the unconditional branch of classifier-free
        guidance; None means the same as response_interval.
    cuda_graphs: on CUDA, replay cached (non-prompt-refresh) steps as CUDA graphs. Those steps
        do little arithmetic, so in eager mode Python and kernel launches dominate. Outputs are
        the same; the returned logits then live in a buffer the next such step overwrites.
    compile: run the cached layer through torch.compile, which fuses its many small kernels
        (norms, RoPE, V-verify). Costs compile time (5-10 s per step kind on an H100, once per layout);
        float32 sums may be reordered, so logits can differ in the last bits. Off by default.
    selection: which response tokens a partial step recomputes.
        "paper": the int(R * ratio) whose Value vectors drifted most (V-verify), anywhere in the
        response, as the dLLM-Cache paper does.
        "frontier" (default): first the tokens being decoded now (the semi-AR block that holds
        the first masked token, or `frontier_window` tokens from it) and the tokens unmasked since
        the last response refresh, by drift; the rest of the budget by V-verify over the whole
        response. Same FLOPs as "paper". Helps semi-autoregressive decoding, where only the
        current block is sampled and the paper's rule spends much of its budget on future blocks
        and finished tokens: on the proxy testbed it keeps all four model/task cells within a
        point of uncached, where "paper" loses 1.8 on Dream arith (README "Refresh policies").
    frontier_window: tokens in the decoding window of the "frontier" selection; None = the
        block length the sampler declared (`reset_cache(..., block_length=B)`, as our LLaDA sampler
        does), else DEFAULT_FRONTIER_WINDOW.
    frontier_only: with "frontier", recompute at most the window's worth of tokens
        (min(int(R * ratio), window)) instead of filling the budget: fewer FLOPs when the
        block is smaller than the budget (GSM8K: block 8 of 256).
    shifted_row: for models whose logits are shifted (Dream: row i predicts token i + 1), where
        the last prompt row, whose logits predict the first response token, is cached.
        "prompt": with the prompt, refreshed every Kp steps (as the paper's cache serves it);
        "response": with the response, so it is refreshed and selected like a response token.
        No effect on unshifted models (LLaDA).

    response_drift_threshold: refresh the response when it drifted, not on a fixed clock. Each
        partial step measures the mean Value drift its V-verify sees anyway (1 - cos(V_new, V_cached),
        averaged over response rows and the layers that ran V-verify; `drift.step_drift`); when it
        reaches this threshold the next step refreshes every response token. response_interval is
        then the longest interval (a refresh is due after that many steps whatever the drift) and
        response_min_interval the shortest. Helps when the response changes in bursts (many tokens
        unmasked at once, a new semi-AR block) and sits still in between: refreshes go where the
        features moved. 0 = refresh every response_min_interval steps. None (default): fixed Kr.
        The schedule then depends on data read back every step, so cached steps run eagerly (no
        CUDA graphs) and compile=True is refused; see `dllm_cache.drift`. Each step's drift is kept
        in cache_stats(model)["drift"]; `dllm_cache.measure_drift(model)` records it under a fixed
        schedule too, and eval/tiny/drift_profile.py turns it into thresholds.
    response_min_interval: with response_drift_threshold, the fewest steps between two response
        refreshes (1 .. response_interval). A refresh step measures no drift, so with a positive
        threshold a drift-triggered refresh comes 2 steps after the last refresh at the earliest.
    layer_ratios: a transfer ratio per layer (one entry per layer of the model, checked by
        enable_cache), replacing transfer_ratio on partial steps: layer i recomputes
        int(R * layer_ratios[i]) tokens. Layer 0 always recomputes every response token (its input,
        the embeddings, changes on every unmask), so entry 0 is not used. Helps when deeper layers'
        features drift more than shallow ones' (each layer's input is the previous ones' output,
        so staleness compounds with depth): `layer_budget.ramp_ratios` moves budget from shallow to
        deep layers at the same mean. None (default): transfer_ratio on every layer.

    kv_cache_dtype: how cached K and V are stored (every policy).
        None (default): in the model's dtype, exact.
        "fp8": float8_e4m3fn with one float32 scale per (batch, KV head, token), about half the
        bytes of bf16 K/V, plus one layer's K/V in the model's dtype as a workspace shared by all
        layers (attention reads the dequantized K/V from there). Lossy: even with every step
        refreshed, attention sees K/V rounded to fp8 (3 mantissa bits), so logits move slightly
        from the uncached model's (tests/test_kv_fp8.py states the bound; eval/kv_fp8_deviation.py
        measures it). For long prompts on models with many KV heads (LLaDA-8B), where K/V dominate
        the cache; see `dllm_cache.kv_store`.
    """

    prompt_interval: int | None = 100
    response_interval: int = 8
    transfer_ratio: float = 0.25
    cfg_interval: int | None = None
    cuda_graphs: bool = True
    compile: bool = False
    selection: str = "frontier"
    frontier_window: int | None = None
    frontier_only: bool = False
    shifted_row: str = "prompt"
    policy: str = "feature"
    block_refresh: int | None = None
    response_drift_threshold: float | None = None
    response_min_interval: int = 1
    layer_ratios: tuple[float, ...] | None = None
    kv_cache_dtype: str | None = None

    def __post_init__(self) -> None:
        required = ("response_interval", "response_min_interval")  # the rest may be None
        for name in ("prompt_interval", "response_interval", "cfg_interval", "frontier_window", "block_refresh",
                     "response_min_interval"):
            value = getattr(self, name)
            if value is None and name not in required:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                meaning = "tokens" if name == "frontier_window" else "refresh every N steps; 1 = every step"
                none = " or None" if name not in required else ""
                raise ValueError(f"CacheConfig.{name} must be an integer >= 1{none} ({meaning}), got {value!r}.")
            object.__setattr__(self, name, int(value))  # numpy / torch integers become plain ints
        for name, allowed in (("policy", POLICIES), ("selection", SELECTIONS), ("shifted_row", SHIFTED_ROWS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"CacheConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"CacheConfig.kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}: None keeps "
                "K/V exact in the model's dtype, 'fp8' stores them as float8_e4m3fn with per-token scales (lossy, "
                "about half the memory). Pass kv_cache_dtype='fp8' or leave it None."
            )
        for name in ("cuda_graphs", "compile", "frontier_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CacheConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        ratio = self.transfer_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
            raise ValueError(
                "CacheConfig.transfer_ratio must be a number in [0, 1] (fraction of response tokens "
                f"recomputed on partial steps; the paper uses 0.25), got {ratio!r}."
            )
        object.__setattr__(self, "transfer_ratio", float(ratio))
        self._check_layer_ratios()
        self._check_policy_fields()
        self._check_drift_fields()

    def _check_layer_ratios(self) -> None:
        ratios = self.layer_ratios
        if ratios is None:
            return
        if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__len__") or len(ratios) == 0:
            raise ValueError("CacheConfig.layer_ratios must be a non-empty sequence of numbers in [0, 1], one per "
                             f"layer of the model (or None for transfer_ratio on every layer), got {ratios!r}.")
        bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"CacheConfig.layer_ratios entries must be numbers in [0, 1] (fraction of response "
                             f"tokens a layer recomputes on partial steps), got {bad[0]!r} in {tuple(ratios)!r}.")
        object.__setattr__(self, "layer_ratios", tuple(float(r) for r in ratios))  # hashable, plain floats

    def _check_drift_fields(self) -> None:
        """The drift-triggered refresh: a sane threshold, min <= max, and a schedule the engine can run."""
        threshold = self.response_drift_threshold
        if threshold is None:
            if self.response_min_interval != 1:
                raise ValueError(
                    f"CacheConfig.response_min_interval={self.response_min_interval} applies only with "
                    "response_drift_threshold set (a fixed schedule refreshes every response_interval steps).")
            return
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 2.0:
            raise ValueError(
                "CacheConfig.response_drift_threshold must be a number in [0, 2] (mean 1 - cosine similarity of "
                f"response Value vectors at which the response is refreshed; 0 = always) or None, got {threshold!r}.")
        object.__setattr__(self, "response_drift_threshold", float(threshold))
        longest = min(self.response_interval, self.uncond_response_interval)
        if self.response_min_interval > longest:
            raise ValueError(
                f"CacheConfig.response_min_interval={self.response_min_interval} exceeds the longest interval "
                f"{longest} (response_interval, and cfg_interval if set, are the longest intervals between "
                "response refreshes once response_drift_threshold is set); lower it or raise those.")
        if self.is_block:
            raise ValueError(f"CacheConfig.response_drift_threshold applies to policy='feature' only; "
                             f"policy={self.policy!r} refreshes on block starts.")
        if self.compile:
            raise ValueError(
                "CacheConfig.response_drift_threshold cannot be combined with compile=True: the drift is read back "
                "after every step to plan the next one, and the compiled layer has no such output. Use compile=False.")
        if not self.verifies_values:
            raise ValueError(
                "CacheConfig.response_drift_threshold needs V-verify to measure drift, but partial steps recompute "
                "nothing (transfer_ratio, or layer_ratios past layer 0, all 0). Give them a budget, or drop the "
                "threshold.")

    def _check_policy_fields(self) -> None:
        """Fields of one cache family set on the other are an error, not silently ignored."""
        if self.is_block:
            defaults = {f.name: f.default for f in fields(self)}
            feature_only = ("selection", "frontier_only", "layer_ratios", "frontier_window", "shifted_row")
            wrong = [name for name in feature_only if getattr(self, name) != defaults[name]]
            if wrong:
                raise ValueError(
                    f"CacheConfig.{', '.join(wrong)} choose what the feature cache recomputes and do not apply to "
                    f"policy={self.policy!r}, which recomputes the decoded block (and, for block-prefix, what "
                    "follows it). Leave them at their defaults, or use policy='feature'."
                )
        elif self.block_refresh is not None:
            raise ValueError(
                f"CacheConfig.block_refresh={self.block_refresh!r} applies to the block policies only "
                "(policy='block-prefix' or 'block-dual'); the feature cache refreshes on response_interval."
            )

    @property
    def is_block(self) -> bool:
        """A block KV-cache policy (Fast-dLLM's prefix or dual cache)."""
        return self.policy != "feature"

    @property
    def uncond_response_interval(self) -> int:
        return self.cfg_interval or self.response_interval

    def window(self, block_length: int | None = None) -> int:
        """Decoding window of the frontier selection, given the sampler's declared block (if any)."""
        return self.frontier_window or block_length or DEFAULT_FRONTIER_WINDOW

    @property
    def verifies_values(self) -> bool:
        """Partial steps run V-verify on some layer (a budget past layer 0), so they measure a drift."""
        budgets = self.layer_ratios[1:] if self.layer_ratios is not None else (self.transfer_ratio,)
        return any(budgets)

    @property
    def drift_triggered(self) -> bool:
        """Response refreshes follow the measured drift (response_drift_threshold set)."""
        return self.response_drift_threshold is not None

    def selected_count(self, num_response: int, block_length: int | None = None, ratio: float | None = None) -> int:
        """Response tokens recomputed per row and layer on a partial step: int(R * ratio), capped
        at the decoding window with `frontier_only`. ratio: a layer's own (default transfer_ratio)."""
        k = int(num_response * (self.transfer_ratio if ratio is None else ratio))
        if self.selection == "frontier" and self.frontier_only:
            k = min(k, self.window(block_length), num_response)
        return k

    def check_layers(self, n_layers: int) -> None:
        """layer_ratios must give one ratio per layer of the model the cache is enabled on."""
        if self.layer_ratios is not None and len(self.layer_ratios) != n_layers:
            raise ValueError(
                f"CacheConfig.layer_ratios has {len(self.layer_ratios)} entries but the model has {n_layers} layers; "
                "give one ratio per layer (entry 0 is not used: layer 0 recomputes every token), e.g. "
                f"dllm_cache.layer_budget.ramp_ratios({n_layers}, transfer_ratio).")

    def layer_counts(self, num_response: int, n_layers: int, block_length: int | None = None) -> tuple[int, ...]:
        """Response tokens each layer recomputes per row on a partial step (entry 0 unused: layer 0
        recomputes all): selected_count with each layer's ratio."""
        if self.layer_ratios is None:
            return (self.selected_count(num_response, block_length),) * n_layers
        self.check_layers(n_layers)
        return tuple(self.selected_count(num_response, block_length, r) for r in self.layer_ratios)
