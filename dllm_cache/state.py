"""Per-model feature store: one instance per cached model, never global.

For each layer it holds the K and V of every token (RoPE applied to K), and the attention
and FFN outputs (the residual deltas) of every token. Buffers are allocated once per
generation shape and overwritten in place afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import CacheConfig
from .schedule import StepPlan, plan_step
from .select import num_selected


@dataclass
class LayerStore:
    k: torch.Tensor  # (batch, kv_heads, seq, head_dim), RoPE applied
    v: torch.Tensor  # (batch, kv_heads, seq, head_dim)
    attn: torch.Tensor  # (batch, seq, d_model): attention output added to the residual
    ffn: torch.Tensor  # (batch, seq, d_model): FFN output added to the residual


@dataclass
class StepContext:
    """What every layer of the current forward needs; built once per step."""

    plan: StepPlan
    prompt_len: int
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (batch, seq, head_dim), float32
    key_mask: torch.Tensor | None  # (batch, seq) bool, None when nothing is padded
    transfer_ratio: float
    head_cached: bool = False  # the LM head serves prompt rows from cache, so layers may skip them

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
    tokens_recomputed: int = 0
    tokens_total: int = 0
    generations: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["recompute_fraction"] = self.tokens_recomputed / self.tokens_total if self.tokens_total else None
        return d


@dataclass
class BranchState:
    """One stream of denoising steps (the conditional pass, or CFG's unconditional pass)."""

    response_interval: int
    step: int = 0
    prompt_len: int = 0
    prompt_ids: torch.Tensor | None = None
    layers: list[LayerStore] = field(default_factory=list)
    # (batch, seq, vocab): logits of the last prompt refresh; its prompt rows serve later steps, and
    # captured steps write their response rows into it (no per-step copy of the prompt rows).
    logits: torch.Tensor | None = None
    # Persistent per generation (CUDA graphs read these addresses): RoPE tables and key mask.
    rope_cos: torch.Tensor | None = None
    rope_sin: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    declared: bool = False  # set by reset_cache(prompt_length=...): skip the per-step prompt check
    masked: int = -1  # undeclared generations: masked response tokens at the previous step
    graphs: dict = field(default_factory=dict)  # (kind, shape key) -> captured step
    seen_kinds: set = field(default_factory=set)  # kinds run eagerly once (warm-up) in this layout
    started: bool = False

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
        return self.layers[0].attn.shape[1] if self.layers and self.layers[0] is not None else -1

    def store_for(self, layer: int, n_layers: int, x: torch.Tensor, kv_heads: int, head_dim: int) -> LayerStore:
        """The layer's buffers, (re)allocated only when shape, dtype or device changed."""
        batch, seq, d_model = x.shape
        if len(self.layers) != n_layers:
            self.layers = [None] * n_layers  # type: ignore[list-item]
        store = self.layers[layer]
        kv_shape = (batch, kv_heads, seq, head_dim)
        if (
            store is None
            or store.attn.shape != x.shape
            or store.k.shape != kv_shape
            or store.attn.dtype != x.dtype
            or store.attn.device != x.device
        ):
            self.drop_graphs()
            kw = dict(dtype=x.dtype, device=x.device)
            store = LayerStore(
                k=torch.empty(kv_shape, **kw),
                v=torch.empty(kv_shape, **kw),
                attn=torch.empty(batch, seq, d_model, **kw),
                ffn=torch.empty(batch, seq, d_model, **kw),
            )
            self.layers[layer] = store
        return store


class CacheState:
    """All cache state of one model: config, branches, the current step's context, stats."""

    def __init__(self, config: CacheConfig, n_layers: int, mask_token_id: int | None):
        self.config = config
        self.n_layers = n_layers
        self.mask_token_id = mask_token_id
        self.branches: dict[str, BranchState] = {}
        self.active_branch = "cond"
        self.pending_prompt_len: dict[str, int] = {}
        self.ctx: StepContext | None = None
        self.stats = Stats()
        self.graphs_disabled = False

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

    def reset(self, prompt_length: int | None = None) -> None:
        """Forget cached features: the next forward of every branch starts a new generation."""
        for b in self.branches.values():
            b.started = False
        self.pending_prompt_len = {}
        if prompt_length is not None:
            self.pending_prompt_len = {"cond": prompt_length, "uncond": prompt_length}

    def detect_prompt_len(self, input_ids: torch.Tensor) -> int:
        """First column holding a mask token in any row: prompts are left padded, responses start masked."""
        if self.mask_token_id is None:
            raise ValueError(
                "Cannot tell where the prompt ends: the model config has no mask_token_id. "
                "Call dllm_cache.reset_cache(model, prompt_length=P) before each generation."
            )
        masked = (input_ids == self.mask_token_id).any(dim=0)
        cols = masked.nonzero()
        return int(cols[0]) if len(cols) else input_ids.shape[1]

    def begin_step(self, input_ids: torch.Tensor) -> tuple[BranchState, StepPlan]:
        """Advance the active branch by one denoising step; start a new generation when needed."""
        b = self.branch()
        pending = self.pending_prompt_len.pop(self.active_branch, None)
        if pending is not None or b.is_new_generation(input_ids, self.mask_token_id):
            b.prompt_len = pending if pending is not None else self.detect_prompt_len(input_ids)
            if not 0 <= b.prompt_len <= input_ids.shape[1]:
                raise ValueError(f"prompt_length={b.prompt_len} is outside the sequence of length {input_ids.shape[1]}.")
            b.prompt_ids = input_ids[:, : b.prompt_len].clone()
            b.step = 0
            b.started = True
            b.declared = pending is not None
            b.masked = -1 if b.declared else int(b.count_masked(input_ids, self.mask_token_id))
            self.stats.generations += 1
        plan = plan_step(b.step, self.config, b.response_interval)
        b.step += 1
        s = self.stats
        s.steps += 1
        kind = plan.kind
        s.full_steps += kind == "full"
        s.response_refresh_steps += kind == "response"
        s.prompt_refresh_steps += kind == "prompt"
        s.partial_steps += kind == "partial"
        if not plan.refresh_response:  # V-verify on every layer but the first
            resp = input_ids.shape[1] - b.prompt_len
            rows_layers = input_ids.shape[0] * (self.n_layers - 1)
            s.tokens_recomputed += rows_layers * num_selected(resp, self.config.transfer_ratio)
            s.tokens_total += rows_layers * resp
        return b, plan
