"""CacheConfig: the knobs of the method and of the refresh policy, validated at construction."""

from __future__ import annotations

import numbers
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .engine.kv_store import KV_CACHE_DTYPES as _STORED_KV_DTYPES

POLICIES = ("feature", "block-prefix", "block-dual")
SELECTIONS = ("paper", "frontier")
SHIFTED_ROWS = ("prompt", "response")
BLOCK_STARTS = ("full", "incremental")
RESPONSE_CLOCKS = ("tokens", "steps")
KV_CACHE_DTYPES = (None, *_STORED_KV_DTYPES)  # None: K/V in the model's dtype (exact); see dllm_cache.engine.kv_store
# Decoding window of the frontier selection when the sampler declared no semi-AR block (Dream).
DEFAULT_FRONTIER_WINDOW = 32


def _field(default: Any, help: str) -> Any:
    """A CacheConfig field with its one description (read by the CLI, the lm-eval model and the docs)."""
    return field(default=default, metadata={"help": " ".join(help.split())})


@dataclass(frozen=True)
class CacheConfig:
    """Which cache, how often it is refreshed, and which tokens are recomputed between refreshes.

    Each field documents itself once, in its metadata (`field_help(name)`, or
    `dataclasses.fields(CacheConfig)`); `dllm-cache generate`'s cache options and the lm-eval model's
    args are built from those fields, so every field is reachable from both and the help cannot drift.
    Values are validated here, at construction; errors name the field and what is valid.
    """

    prompt_interval: int | None = _field(100, """
        Kp: prompt tokens' K/V, attention and FFN outputs are recomputed every Kp denoising steps and reused in
        between. None: only on the first step of a generation. The prompt never changes during a generation; only
        its attention to the response does, so with a short response and a long prompt a refresh buys little and
        costs a full forward.""")
    response_interval: int = _field(8, """
        Kr: all response tokens are recomputed every Kr steps (with response_drift_threshold: the longest
        interval between response refreshes).""")
    transfer_ratio: float = _field(0.25, """
        On the steps between refreshes, this fraction of response tokens (those whose Value vectors drifted most,
        by cosine similarity) is recomputed: int(R * ratio) per row.""")
    cfg_interval: int | None = _field(None, """
        Response interval for the unconditional branch of classifier-free guidance; None: the same as
        response_interval.""")
    cuda_graphs: bool = _field(True, """
        On CUDA, replay cached (non-prompt-refresh) steps as CUDA graphs: those steps do little arithmetic, so in
        eager mode Python and kernel launches dominate. Same outputs; the returned logits then live in a buffer the
        next such step overwrites.""")
    compile: bool = _field(False, """
        Run the cached layer through torch.compile, which fuses its many small kernels (norms, RoPE, V-verify).
        Costs compile time (5-10 s per step kind on an H100, once per layout); float32 sums may be reordered, so
        logits can differ in the last bits.""")
    selection: str = _field("frontier", """
        Which response tokens a partial step recomputes. "paper": the int(R * ratio) whose Value vectors drifted
        most (V-verify), anywhere in the response, as the dLLM-Cache paper does. "frontier": first the tokens being
        decoded now (the semi-AR block holding the first masked token, or frontier_window tokens from it) and those
        unmasked since the last response refresh, by drift; the rest of the budget by V-verify over the whole
        response. Same FLOPs as "paper"; helps semi-autoregressive decoding, where the paper's rule spends much of
        its budget on future blocks and finished tokens.""")
    frontier_window: int | None = _field(None, """
        Tokens in the decoding window of the "frontier" selection; None: the block length the sampler declared
        (reset_cache(..., block_length=B), as our LLaDA sampler does), else DEFAULT_FRONTIER_WINDOW (32).""")
    frontier_only: bool = _field(False, """
        With "frontier", recompute at most the window's worth of tokens (min(int(R * ratio), window)) instead of
        filling the budget: fewer FLOPs when the block is smaller than the budget (GSM8K: block 8 of 256).""")
    shifted_row: str = _field("prompt", """
        For models whose logits are shifted (Dream: row i predicts token i + 1), where the last prompt row, whose
        logits predict the first response token, is cached. "prompt": with the prompt, refreshed every Kp steps (as
        the paper's cache serves it); "response": with the response, refreshed and selected like a response token.
        No effect on unshifted models (LLaDA).""")
    policy: str = _field("feature", """
        The family of cache. "feature": the dLLM-Cache method (per token and layer the attention and FFN outputs
        are reused; the intervals, transfer_ratio and selection fields say what is refreshed when).
        "block-prefix" / "block-dual": Fast-dLLM's block KV cache: only K and V are reused, refreshed by a full
        forward at the start of every semi-autoregressive block (block_start="full", the default; see block_start)
        and every block_refresh steps; in between
        "block-prefix" recomputes the decoded block (the rows the sampler asks logits for, logits_to_keep) and
        everything after it, "block-dual" the decoded block only. The feature cache's fields do not apply.""")
    block_refresh: int | None = _field(None, """
        Block policies only: also refresh every N steps within a block (1 = every step, which equals the uncached
        model); None: at block starts only, as Fast-dLLM.""")
    block_start: str = _field("full", """
        Block policies only: what a new block's first step runs. "full": a full forward of every row (Fast-dLLM).
        "incremental": the block just decoded (its rows' K/V were last written while some of its tokens were still
        masks) and the new block's region, against the cached K/V of every other row; a full forward only on step
        0 of a generation and every prompt_interval steps (Kp; None: step 0 only; 1: every step, which equals the
        uncached model). The prompt's and later blocks' K/V then stay up to Kp steps stale, as the feature cache's
        prompt does. Not combined with block_refresh (prompt_interval is its clock).""")
    response_drift_threshold: float | None = _field(None, """
        Refresh the response when it drifted, not on a fixed clock: each partial step measures the mean Value
        drift its V-verify sees anyway (1 - cos(V_new, V_cached) over response rows and layers); when it reaches
        this threshold the next step refreshes every response token. response_interval is then the longest and
        response_min_interval the shortest interval. 0 = refresh every response_min_interval steps; None: fixed
        Kr. Cached steps then run eagerly (no CUDA graphs) and compile=True is refused; see dllm_cache.engine.drift.""")
    response_min_interval: int = _field(1, """
        With response_drift_threshold, the fewest steps between two response refreshes (1 .. response_interval).
        A refresh step measures no drift, so a drift-triggered refresh comes 2 steps after the last at the
        earliest.""")
    layer_ratios: tuple[float, ...] | None = _field(None, """
        A transfer ratio per layer (one entry per layer of the model, checked by enable_cache) replacing
        transfer_ratio on partial steps: layer i recomputes int(R * layer_ratios[i]) tokens; entry 0 is not used
        (layer 0 always recomputes every response token). Deeper layers' features drift more (staleness compounds
        with depth): dllm_cache.engine.layer_budget.ramp_ratios moves budget from shallow to deep layers at the same
        mean. On a command line: numbers separated by ':' (or ','). None: transfer_ratio on every layer.""")
    kv_cache_dtype: str | None = _field(None, """
        How cached K and V are stored (every policy). None: in the model's dtype, exact. "fp8": float8_e4m3fn
        with one float32 scale per (batch, KV head, token), about half the bytes of bf16 K/V, plus one layer's K/V
        in the model's dtype as a shared workspace. Lossy: attention sees K/V rounded to fp8, so logits move
        slightly from the uncached model's; for long prompts on models with many KV heads. See
        dllm_cache.engine.kv_store.""")
    response_clock: str = _field("steps", """
        What response_interval (Kr; cfg_interval for CFG's unconditional pass) counts. "tokens": the response is
        refreshed once the rows have committed Kr tokens each (on average over the batch) since the last response
        refresh, or after Kr steps, whichever comes first; at one token per step that is the step clock, and
        under parallel decoding (threshold or factor: ~3 tokens per step on LLaDA-8B at threshold 0.9)
        refreshes come sooner, because response features go stale per token committed, not per step. The counts
        come from our samplers at no extra host sync (the threshold / factor rules read them with the step's
        existing one, a replayed trace has them on the host); forwards the sampler reports nothing for (the
        fixed schedule, another sampling loop, LLaDA 2.x's in-block cache) follow the step clock. The batch mean
        gives a batch about the plan one row alone would get (dllm_cache.engine.schedule.batch_committed).
        "steps" (the default): every Kr steps whatever was decoded, the paper's rule. "tokens" is opt-in: on the
        shipped LLaDA proxy at threshold 0.9 it did not beat the step clock and cost more FLOPs
        (eval/results/adaptive_interval_cpu.md).""")

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
        for name, allowed in (("policy", POLICIES), ("selection", SELECTIONS), ("shifted_row", SHIFTED_ROWS),
                              ("block_start", BLOCK_STARTS), ("response_clock", RESPONSE_CLOCKS)):
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
            feature_only = ("selection", "frontier_only", "layer_ratios", "frontier_window", "shifted_row",
                            "response_clock")
            wrong = [name for name in feature_only if getattr(self, name) != defaults[name]]
            if wrong:
                raise ValueError(
                    f"CacheConfig.{', '.join(wrong)} choose what the feature cache recomputes and do not apply to "
                    f"policy={self.policy!r}, which recomputes the decoded block (and, for block-prefix, what "
                    "follows it). Leave them at their defaults, or use policy='feature'."
                )
            if self.block_start == "incremental" and self.block_refresh is not None:
                raise ValueError(
                    f"CacheConfig.block_refresh={self.block_refresh!r} cannot be combined with block_start='incremental', "
                    "whose full forwards come every prompt_interval steps (prompt_interval=1: every step). Set "
                    "prompt_interval instead, or use block_start='full'."
                )
        elif self.block_refresh is not None:
            raise ValueError(
                f"CacheConfig.block_refresh={self.block_refresh!r} applies to the block policies only "
                "(policy='block-prefix' or 'block-dual'); the feature cache refreshes on response_interval."
            )
        elif self.block_start != "full":
            raise ValueError(
                f"CacheConfig.block_start={self.block_start!r} applies to the block policies only "
                "(policy='block-prefix' or 'block-dual'); the feature cache has no blocks to start."
            )

    @property
    def is_block(self) -> bool:
        """A block KV-cache policy (Fast-dLLM's prefix or dual cache)."""
        return self.policy != "feature"

    @property
    def counts_tokens(self) -> bool:
        """Response refreshes also follow the tokens committed (response_clock "tokens", feature cache)."""
        return self.response_clock == "tokens" and not self.is_block

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
                f"dllm_cache.engine.layer_budget.ramp_ratios({n_layers}, transfer_ratio).")

    def layer_counts(self, num_response: int, n_layers: int, block_length: int | None = None) -> tuple[int, ...]:
        """Response tokens each layer recomputes per row on a partial step (entry 0 unused: layer 0
        recomputes all): selected_count with each layer's ratio."""
        if self.layer_ratios is None:
            return (self.selected_count(num_response, block_length),) * n_layers
        self.check_layers(n_layers)
        return tuple(self.selected_count(num_response, block_length, r) for r in self.layer_ratios)


# ----------------------------------------------------------------------------- fields as text
# A command line and lm-eval's --model_args give every value as a string; these read one into the
# field's declared type. Ranges and cross-field rules stay in CacheConfig.__post_init__.
_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})
_NONE = frozenset({"none", "null", ""})


def field_help(name: str) -> str:
    """The one description of CacheConfig field `name` (its dataclass metadata)."""
    for f in fields(CacheConfig):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"CacheConfig has no field {name!r}; fields: {', '.join(f.name for f in fields(CacheConfig))}.")


def field_type(name: str) -> tuple[type, bool]:
    """(base type, None allowed) of CacheConfig field `name`: e.g. (int, True) for `int | None`,
    (tuple, True) for `tuple[float, ...] | None`."""
    hint = typing.get_type_hints(CacheConfig)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    return typing.get_origin(base) or base, optional


def parse_field(name: str, value: Any) -> Any:
    """`value` for CacheConfig field `name`, read from text ("8", "none", "on", "0.1:0.2") when it is a
    string, passed through otherwise. Errors name the field and the expected form."""
    kind, optional = field_type(name)
    if not isinstance(value, str):
        if kind is tuple and isinstance(value, list):
            return tuple(value)
        return value
    text = value.strip()
    if optional and text.lower() in _NONE:
        return None
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is int:
            number = float(text)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            return float(text)
        if kind is tuple:
            parts = [p for p in text.replace(":", " ").replace(",", " ").replace("/", " ").split() if p]
            if not parts:
                raise ValueError
            return tuple(float(p) for p in parts)
    except ValueError:
        forms = {bool: "on/off, true/false or 1/0", int: "an integer", float: "a number",
                 tuple: "numbers separated by ':' (e.g. 0.1:0.25:0.4)"}
        none = " or none" if optional else ""
        raise ValueError(f"CacheConfig.{name}={value!r}: expected {forms[kind]}{none}.") from None
    return text
