"""Per-model feature store: one instance per cached model, never global.

It keeps only what later steps read. For each layer: the K and V of every token (RoPE applied
to K: every query attends to all keys), and the attention and FFN outputs (the residual
deltas) of the response tokens, which cached steps reuse for the tokens they do not
recompute. Prompt rows' deltas are recomputed on every prompt refresh and never read between
refreshes, because the LM head serves prompt-row logits from the last refresh; they are kept
only for models whose head the cache cannot patch (then the prompt rows' hidden states must be
rebuilt on every step). Per branch: the logits of the prompt rows the caller asked for
(`logits_to_keep`), none for our samplers but Dream's row P-1. Buffers are allocated once per
generation shape and overwritten in place afterwards. The block policies (Fast-dLLM's prefix and
dual cache) reuse only K and V: their stores hold no deltas. K and V sit in a `kv_store` store:
exact in the model's dtype, or fp8 (CacheConfig.kv_cache_dtype) with one workspace per branch
and device that all layers' reads share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..config import CacheConfig
from .drift import DriftTrace, plan_drift_step
from .kv_store import ExactKV, Fp8KV
from .schedule import StepPlan, batch_committed, block_region, plan_block_step, plan_step


@dataclass
class LayerStore:
    # K (RoPE applied) and V of every token, prompt and response: (batch, kv_heads, seq, head_dim) reads
    kv: ExactKV | Fp8KV
    # (batch, R, d_model) each: response rows' attention / FFN outputs added to the residual; None
    # under the block policies, which reuse K/V only
    attn: torch.Tensor | None
    ffn: torch.Tensor | None
    # (batch, P, d_model) each, or None: prompt rows' deltas, kept only when the LM head is not
    # patched (prompt rows must then be rebuilt on cached steps).
    prompt_attn: torch.Tensor | None = None
    prompt_ffn: torch.Tensor | None = None

    def keep_deltas(self, attn: torch.Tensor, ffn: torch.Tensor) -> None:
        """Store a full step's deltas (batch, seq, d_model): response rows, and prompt rows if kept."""
        if self.attn is None:  # a block policy: K/V only
            return
        P = attn.shape[1] - self.attn.shape[1]
        self.attn.copy_(attn[:, P:])
        self.ffn.copy_(ffn[:, P:])
        if self.prompt_attn is not None:
            self.prompt_attn.copy_(attn[:, :P])
            self.prompt_ffn.copy_(ffn[:, :P])

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {**self.kv.tensors(), "attn": self.attn, "ffn": self.ffn,
                "prompt_attn": self.prompt_attn, "prompt_ffn": self.prompt_ffn}


@dataclass
class StepContext:
    """What every layer of the current forward needs; built once per step."""

    plan: StepPlan
    prompt_len: int
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (batch, seq, head_dim), float32
    key_mask: torch.Tensor | None  # (batch, seq) bool, None when nothing is padded
    selected: int  # response tokens recomputed per row on partial layers (CacheConfig.selected_count)
    head_cached: bool = False  # the LM head serves prompt rows from cache, so layers may skip them
    # (batch, R) priority levels: tokens a partial step recomputes first ("frontier" selection), else
    # None. Set inside the step's forward (so CUDA graphs recompute it from each step's input ids).
    priority: torch.Tensor | None = None
    # Rows [lo, hi) whose logits the caller asked for (logits_to_keep); all rows by default.
    logit_rows: tuple[int, int] = (0, 0)
    # (n,) int64, block steps only: the rows recomputed (persistent, so one captured graph serves
    # every block of the same size)
    rows_index: torch.Tensor | None = None
    # CacheConfig.layer_ratios: each layer's `selected` (entry 0 unused), else None (one for all)
    layer_selected: tuple[int, ...] | None = None
    # each V-verify layer appends its drift (drift.layer_drift) when the step measures one
    # (CacheState.measures_drift), else None
    drift: list[torch.Tensor] | None = None

    def for_layer(self, index: int) -> StepContext:
        """The context layer `index` runs with: its own `selected` under per-layer budgets."""
        if self.layer_selected is None or self.selected == self.layer_selected[index]:
            return self
        return replace(self, selected=self.layer_selected[index])

    @property
    def prompt_rows_dead(self) -> bool:
        return self.head_cached and not self.plan.refresh_prompt


@dataclass
class Stats:
    steps: int = 0
    full_steps: int = 0
    response_refresh_steps: int = 0
    prompt_refresh_steps: int = 0
    partial_steps: int = 0
    block_steps: int = 0
    drift_refreshes: int = 0  # response refreshes triggered by the measured drift (response_drift_threshold)
    tokens_recomputed: int = 0
    tokens_total: int = 0
    generations: int = 0
    # branch name -> the drift of each step that measured one (CacheState.measures_drift)
    drift: dict[str, DriftTrace] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "drift"}
        d["recompute_fraction"] = self.tokens_recomputed / self.tokens_total if self.tokens_total else None
        if self.drift:  # only when steps measured a drift: other configs' stats stay flat counters
            d["drift"] = {name: trace.as_dict() for name, trace in self.drift.items()}
        return d


@dataclass
class BranchState:
    """One stream of denoising steps (the conditional pass, or CFG's unconditional pass)."""

    response_interval: int
    step: int = 0
    prompt_len: int = 0  # where the cached response region starts (see token_prompt_len)
    # where the generated tokens start; token_prompt_len - prompt_len = 1 when a shifted model's
    # last prompt row is cached with the response (CacheConfig.shifted_row="response")
    token_prompt_len: int = 0
    block_length: int | None = None  # the sampler's semi-AR block, when declared
    # (batch, token R): response tokens at the last response refresh ("frontier": unmasked since)
    refresh_tokens: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None
    layers: list[LayerStore] = field(default_factory=list)
    # (batch, rows, vocab): logits of the prompt rows the caller kept at the last prompt refresh,
    # rows prompt_logit_rows = [lo, hi); later steps serve those rows from here.
    prompt_logits: torch.Tensor | None = None
    prompt_logit_rows: tuple[int, int] = (0, 0)
    # Persistent per generation (CUDA graphs read these addresses): RoPE tables, key mask, and
    # the response rows whose logits the current step computes (batch-independent, (rows,) int64).
    rope_cos: torch.Tensor | None = None
    rope_sin: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    logit_index: torch.Tensor | None = None
    logit_index_start: int = -1
    # Block policies: the logit rows asked for on the last step (a change starts a new block), the
    # steps since the last full refresh, and the persistent index of the rows a block step recomputes.
    asked_rows: tuple[int, int] | None = None
    since_refresh: int = 0
    block_index: torch.Tensor | None = None
    # row count -> a persistent index of that many rows: block_start="incremental" alternates two region
    # sizes (a block start's and a block step's), each with its own captured graph reading its own index
    block_indexes: dict[int, torch.Tensor] = field(default_factory=dict)
    declared: bool = False  # set by reset_cache(prompt_length=...): skip the per-step prompt check
    masked: int = -1  # undeclared generations: masked response tokens at the previous step
    # fp8 K/V stores (CacheConfig.kv_cache_dtype): one layer's dequantized K/V per device, shared by its layers
    kv_workspaces: dict[torch.device, ExactKV] = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)  # (kind, shape key) -> captured step
    seen_kinds: set = field(default_factory=set)  # kinds run eagerly once (warm-up) in this layout
    started: bool = False
    # feature policy: steps since the last response refresh as of the current step (0 on a refresh);
    # drift-triggered refresh: the last step's drift, which plans the next one
    since_response: int = 0
    drift: float = 0.0
    # response_clock "tokens": per batch row, tokens the sampler reported committed since the last response
    # refresh (CacheState.note_committed); empty when nothing was reported (the step clock alone decides)
    committed: list[int] = field(default_factory=list)

    def persist(self, name: str, value: torch.Tensor | None) -> torch.Tensor | None:
        """Keep `value` in the branch's buffer of that name, in place when the layout allows,
        so captured graphs keep reading valid memory; a new layout drops the graphs."""
        old = getattr(self, name)
        if value is None or old is None or old.shape != value.shape or old.dtype != value.dtype or old.device != value.device:
            if old is not None or value is not None:
                self.drop_graphs()
            setattr(self, name, None if value is None else value.clone())
        else:
            old.copy_(value)
        return getattr(self, name)

    def drop_graphs(self) -> None:
        self.graphs.clear()
        self.seen_kinds.clear()

    def is_new_generation(self, input_ids: torch.Tensor, mask_token_id: int | None) -> bool:
        """Undeclared: new when the shape or the prompt tokens change, or when more response
        tokens are masked than at the previous step (a sampler only unmasks: the same prompt
        was started again). One host sync per step; a declared generation skips it."""
        if not self.started or self.prompt_ids is None:
            return True
        if input_ids.shape[0] != self.prompt_ids.shape[0] or input_ids.shape[1] != self._seq_len():
            return True
        if self.declared:  # the caller declared this generation; comparing would cost a host sync per step
            return False
        changed = (input_ids[:, : self.prompt_len] != self.prompt_ids).any()
        changed, masked = torch.stack([changed.long(), self.count_masked(input_ids, mask_token_id)]).tolist()
        more_masked, self.masked = masked > self.masked, masked
        return bool(changed) or more_masked

    def count_masked(self, input_ids: torch.Tensor, mask_token_id: int | None) -> torch.Tensor:
        """Mask tokens in the response columns, as a 0-d tensor (no sync)."""
        if mask_token_id is None:
            return input_ids.new_zeros(())
        return (input_ids[:, self.prompt_len :] == mask_token_id).sum()

    def _seq_len(self) -> int:
        return self.layers[0].kv.shape[2] if self.layers and self.layers[0] is not None else -1

    def store_for(
        self, layer: int, n_layers: int, x: torch.Tensor, kv_heads: int, head_dim: int, prompt_deltas: bool,
        deltas: bool = True, kv_cache_dtype: str | None = None,
    ) -> LayerStore:
        """The layer's buffers, (re)allocated only when shape, dtype or device changed.

        x: (batch, seq, d_model) block input; the response is x's last seq - prompt_len rows.
        deltas False (block policies): K and V only. kv_cache_dtype: CacheConfig's (None: exact)."""
        batch, seq, d_model = x.shape
        resp = seq - self.prompt_len
        if len(self.layers) != n_layers:
            self.layers = [None] * n_layers  # type: ignore[list-item]
        store = self.layers[layer]
        kv_shape = (batch, kv_heads, seq, head_dim)
        prompt_shape = (batch, self.prompt_len, d_model) if prompt_deltas and deltas else None
        delta_shape = (batch, resp, d_model) if deltas else None
        if (
            store is None
            or (None if store.attn is None else store.attn.shape) != delta_shape
            or store.kv.shape != kv_shape
            or (None if store.prompt_attn is None else store.prompt_attn.shape) != prompt_shape
            or store.kv.dtype != x.dtype
            or store.kv.device != x.device
        ):
            self.drop_graphs()
            self.layers[layer] = store = None  # type: ignore[assignment]  # free the old buffers first
            kw = dict(dtype=x.dtype, device=x.device)
            store = LayerStore(
                kv=self._new_kv(kv_shape, x.dtype, x.device, kv_cache_dtype),
                attn=torch.empty(delta_shape, **kw) if deltas else None,
                ffn=torch.empty(delta_shape, **kw) if deltas else None,
                prompt_attn=torch.empty(prompt_shape, **kw) if prompt_shape else None,
                prompt_ffn=torch.empty(prompt_shape, **kw) if prompt_shape else None,
            )
            self.layers[layer] = store
        return store

    def _new_kv(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                kv_cache_dtype: str | None) -> ExactKV | Fp8KV:
        """A layer's K/V store; an fp8 one shares the branch's workspace on its device, (re)allocated
        when the generation shape changes (workspaces no layer uses any more are dropped)."""
        if kv_cache_dtype is None:
            return ExactKV.empty(shape, dtype, device)
        live = {s.kv.workspace.k.data_ptr() for s in self.layers if s is not None and isinstance(s.kv, Fp8KV)}
        self.kv_workspaces = {d: w for d, w in self.kv_workspaces.items() if w.k.data_ptr() in live}
        workspace = self.kv_workspaces.get(device)
        if workspace is None or not workspace.matches(shape, dtype, device):
            workspace = self.kv_workspaces[device] = ExactKV.empty(shape, dtype, device)
        return Fp8KV.empty(shape, workspace)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor this branch holds between steps, by name (layer tensors as `layers.i.name`)."""
        out = {}
        for i, store in enumerate(self.layers):
            if store is not None:
                out.update({f"layers.{i}.{k}": t for k, t in store.tensors().items() if t is not None})
        for device, workspace in self.kv_workspaces.items():
            out.update({f"kv_workspace.{device}.{k}": t for k, t in workspace.tensors().items()})
        for name in ("prompt_logits", "rope_cos", "rope_sin", "key_mask", "logit_index", "block_index"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _no_mask_embedding() -> None:
    """The mask token's embedding before enable_cache supplies the model's (prompts given as ids need none)."""
    return None


class CacheState:
    """All cache state of one model: config, branches, the current step's context, stats."""

    def __init__(self, config: CacheConfig, n_layers: int, mask_token_id: int | None, logit_shift: int = 0):
        self.config = config
        self.n_layers = n_layers
        self.mask_token_id = mask_token_id
        self.logit_shift = logit_shift  # 1 when logits at row i predict token i + 1 (Dream)
        self.branches: dict[str, BranchState] = {}
        self.active_branch = "cond"
        self.pending_prompt_len: dict[str, int] = {}
        self.pending_block_length: int | None = None
        self.ctx: StepContext | None = None
        self.stats = Stats()
        self.graphs_disabled = False
        # patch.measure_drift: steps of any schedule measure their drift (one host read per step, no graphs)
        self.measuring_drift = False
        # () -> the mask token's input embedding, or None; finds the response in inputs_embeds steps.
        self.mask_embedding: Callable[[], torch.Tensor | None] = _no_mask_embedding  # a module function: picklable

    @property
    def measures_drift(self) -> bool:
        """Cached steps measure their drift: always under a drift-triggered config (it plans the next
        step), under any other inside `patch.measure_drift`."""
        return self.config.drift_triggered or self.measuring_drift

    def note_drift(self, b: BranchState, plan: StepPlan, drift: float) -> None:
        """A step of branch `b` measured `drift` (drift.step_drift): it plans the branch's next step
        (drift-triggered config) and joins the stats' trace, unless the step refreshed the response
        (which measures none)."""
        b.drift = drift
        if not plan.refresh_response:
            trace = self.stats.drift.setdefault(self.active_branch, DriftTrace())
            trace.add(b.step - 1, b.since_response, drift)

    def note_committed(self, per_row: list[int]) -> None:
        """The sampler committed `per_row[r]` tokens in row r after the last forward (host ints, read with
        the step's existing sync): every started branch of the feature cache adds them to its count since
        its last response refresh (response_clock "tokens"). A batch of another size restarts the count."""
        if not self.config.counts_tokens:
            return
        for b in self.branches.values():
            if not b.started:
                continue
            if len(b.committed) != len(per_row):
                b.committed = [0] * len(per_row)
            b.committed = [a + int(n) for a, n in zip(b.committed, per_row)]

    def disable_graphs(self) -> None:
        self.graphs_disabled = True
        for b in self.branches.values():
            b.drop_graphs()

    def branch(self, name: str | None = None) -> BranchState:
        name = name or self.active_branch
        if name not in self.branches:
            kr = self.config.uncond_response_interval if name == "uncond" else self.config.response_interval
            self.branches[name] = BranchState(response_interval=kr)
        return self.branches[name]

    def reset(self, prompt_length: int | None = None, block_length: int | None = None) -> None:
        """Forget cached features: the next forward of every branch starts a new generation."""
        for b in self.branches.values():
            b.started = False
        self.pending_prompt_len = {}
        self.pending_block_length = block_length
        if prompt_length is not None:
            self.pending_prompt_len = {"cond": prompt_length, "uncond": prompt_length}

    def detect_prompt_len(self, input_ids: torch.Tensor) -> int:
        """First column holding a mask token in any row: prompts are left padded, responses start masked.

        input_ids: (batch, seq) token ids, or (batch, seq, hidden) embeddings, whose mask rows equal
        the mask token's input embedding."""
        mask_value = self.mask_token_id if input_ids.dim() == 2 else self.mask_embedding()
        if mask_value is None:
            raise ValueError(
                "Cannot tell where the prompt ends: the model config has no mask_token_id (or, for inputs_embeds, "
                "no input embedding to compare with). "
                "Call dllm_cache.reset_cache(model, prompt_length=P) before each generation."
            )
        is_mask = input_ids == mask_value if input_ids.dim() == 2 else (input_ids == mask_value.to(input_ids)).all(-1)
        masked = is_mask.any(dim=0)
        cols = masked.nonzero()
        return int(cols[0]) if len(cols) else input_ids.shape[1]

    def begin_step(self, input_ids: torch.Tensor, asked: tuple[int, int] | None = None) -> tuple[BranchState, StepPlan]:
        """Advance the active branch by one denoising step; start a new generation when needed.

        asked: the rows [lo, hi) whose logits the caller wants (default all): under the block
        policies, the decoded block."""
        b = self.branch()
        pending = self.pending_prompt_len.pop(self.active_branch, None)
        if pending is not None or b.is_new_generation(input_ids, self.mask_token_id):
            P = pending if pending is not None else self.detect_prompt_len(input_ids)
            if not 0 <= P <= input_ids.shape[1]:
                raise ValueError(f"prompt_length={P} is outside the sequence of length {input_ids.shape[1]}.")
            b.token_prompt_len = P
            shift = self.logit_shift if self.config.shifted_row == "response" else 0
            b.prompt_len = max(0, P - shift)
            b.block_length = self.pending_block_length if pending is not None else None
            b.prompt_ids = input_ids[:, : b.prompt_len].clone()
            b.step = 0
            b.started = True
            b.declared = pending is not None
            b.masked = -1 if b.declared else int(b.count_masked(input_ids, self.mask_token_id))
            b.asked_rows = None
            self.stats.generations += 1
        if self.config.is_block:
            plan = self._block_plan(b, input_ids, asked)
        else:
            committed = batch_committed(b.committed)  # the batch rule: the mean over rows
            if self.config.drift_triggered:  # steps since the refresh, counting this one
                plan, triggered = plan_drift_step(b.step, b.since_response + 1, b.drift, self.config, b.response_interval,
                                                  committed)
                self.stats.drift_refreshes += triggered
                b.drift = 0.0  # until this step's V-verify measures one
            else:
                plan = plan_step(b.step, self.config, b.response_interval, b.since_response + 1, committed)
            b.since_response = 0 if plan.refresh_response else b.since_response + 1
            if plan.refresh_response:
                b.committed = []
        b.step += 1
        s = self.stats
        s.steps += 1
        kind = plan.kind
        s.full_steps += kind == "full"
        s.response_refresh_steps += kind == "response"
        s.prompt_refresh_steps += kind == "prompt"
        s.partial_steps += kind == "partial"
        s.block_steps += kind == "block"
        if kind == "block":  # every layer recomputes the region's rows
            resp = input_ids.shape[1] - b.prompt_len
            lo, hi = plan.rows
            s.tokens_recomputed += input_ids.shape[0] * self.n_layers * (hi - max(lo, b.prompt_len))
            s.tokens_total += input_ids.shape[0] * self.n_layers * resp
        elif not plan.refresh_response:  # V-verify on every layer but the first
            resp = input_ids.shape[1] - b.prompt_len
            rows_layers = input_ids.shape[0] * (self.n_layers - 1)
            s.tokens_recomputed += input_ids.shape[0] * sum(self.layer_counts(b, input_ids.shape[1])[1:])
            s.tokens_total += rows_layers * resp
        return b, plan

    def _block_plan(self, b: BranchState, input_ids: torch.Tensor, asked: tuple[int, int] | None) -> StepPlan:
        """Block policies: refresh when the decoded block (the asked rows) changes, else recompute it."""
        seq = input_ids.shape[1]
        asked = asked or (0, seq)
        since = None if asked != b.asked_rows else b.since_refresh
        policy = self.config.policy
        previous = None if b.asked_rows is None else block_region(b.asked_rows, seq, self.logit_shift, policy)
        plan = plan_block_step(since, self.config, block_region(asked, seq, self.logit_shift, policy), b.step, previous)
        b.asked_rows = asked
        b.since_refresh = 1 if plan.kind == "full" else b.since_refresh + 1
        return plan

    def selected_count(self, b: BranchState, seq_len: int) -> int:
        return self.config.selected_count(seq_len - b.prompt_len, b.block_length)

    def layer_counts(self, b: BranchState, seq_len: int) -> tuple[int, ...]:
        """Tokens each layer recomputes per row on a partial step (entry 0 unused)."""
        return self.config.layer_counts(seq_len - b.prompt_len, self.n_layers, b.block_length)
