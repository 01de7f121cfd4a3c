"""A slow, plain reference of what the feature cache computes: the oracle for tests/test_oracle_cache.py.

Written from the algorithm (DESIGN.md "The algorithm"; CacheConfig's docstrings), not from the
engine: nothing here calls dllm_cache's layer, select, frontier, schedule, drift or state code. The
model is read through its family adapter (dllm_cache.hooks: the blocks' norms, projections and
MLPs) and its own embedding, final norm and LM head; RoPE, attention, cosine similarity, top-k
selection and the step schedule are written out here.

Per step and layer the reference computes the *fresh* layer for every row from the composed input
x: h = norm(x), q, k, v for all rows, attention of all queries against the cached K/V, the FFN of
all rows. Then the cache decides which rows take their fresh values:
- prompt rows: on prompt refreshes (step 0, then every Kp steps; Kp None: step 0 only);
- response rows: on response refreshes (every Kr steps of the generation, or when the measured
  drift triggers one), and always at layer 0 (its input, the embeddings, changes on every unmask);
- otherwise, per layer >= 1 and batch row, the k = int(R * ratio) response rows of lowest score,
  score = cos(V_fresh, V_cached) over all heads (minus 3 per frontier priority level).
K is written for the recomputed rows; V for the recomputed rows and, on partial steps, for every
response row (it was computed for the drift test anyway). Recomputed rows' attention outputs are
computed against the cache *after* those writes; every row adds its cached attention delta, then
the recomputed rows' FFN outputs are taken and every row adds its cached FFN delta.

Facts taken from reading the engine, each the *definition* the docs leave open:
- the clocks count steps of the generation from 0 (schedule.plan_step: step % Kp, step % Kr);
  response_clock "tokens" (CacheConfig's docstring: "once the rows have committed Kr tokens each (on
  average over the batch) since the last response refresh, or after Kr steps, whichever comes first")
  counts, per row, the response's mask tokens at the last response refresh minus those now (no
  early-stop fills in these tests), averaged over the rows, and only when the sampler reports its
  commits (threshold, factor, replay; not the fixed schedule);
  the drift trigger (drift.plan_drift_step) compares the previous step's drift, 0.0 when it
  measured none, and counts steps since the last response refresh including the current one;
- a step's drift is the mean over V-verify layers of mean(1 - cos) over batch and response rows;
  layers with k = 0 run no V-verify, write no V and measure nothing (layer._response_queries);
- "response" rows start at P - 1 on shifted models (Dream) with shifted_row="response", else at
  the prompt length P (state.begin_step); the prompt length is the one the sampler declares;
- the frontier window (frontier.decoding_window): starts at the semi-AR block holding the first
  masked token when the sampler declared a block length and frontier_window is None, else at the
  first masked token; it is CacheConfig.window(block_length) tokens long; empty when nothing is
  masked. Priority 2: window tokens and, on shifted models, the rows predicting them; 1: tokens
  changed since the last response refresh (the input ids of that step); priorities count 3 each
  against the cosine (select.select_drifted);
- positions: 0..seq-1 for LLaDA, MMaDA and LLaDA-MoE, counted from the first real token for Dream
  (hooks/*.positions); padded keys are masked for every query;
- prompt rows' logits come from the last prompt refresh: here they follow from the composition
  itself (between prompt refreshes every prompt row adds the deltas of that refresh to the same
  input, so its hidden state, and its logits, are those of the refresh).

Ties: the selection is a top-k over floats. `min_margin` records, per step, the smallest gap at
the k boundary (k-th vs (k+1)-th lowest score, in float64); a gap below ~1e-6 means float32
rounding may pick either token, and the tests print it with any mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dllm_cache import CacheConfig
from dllm_cache.hooks import adapter_for

DEFAULT_WINDOW = 32  # CacheConfig's documented window without a declared block (config.DEFAULT_FRONTIER_WINDOW)


class PlainModel:
    """A model's weights seen plainly: embedding, per-layer parts (through the family adapter), final
    norm and head, with RoPE, attention and positions written here."""

    def __init__(self, model: nn.Module):
        adapter = adapter_for(model)
        self.family = adapter.family
        self.shift = 1 if self.family == "dream" else 0  # Dream's logits at row i predict token i + 1
        self.layers = [adapter.parts(block) for block in adapter.blocks(model)]
        dims = adapter.dims(model.config)
        self.n_heads, self.n_kv, self.hd, self.theta = dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.rope_theta
        if self.family == "llada":  # LLaDA and MMaDA
            tr = model.model.transformer
            self.embed = tr.wte
            self.final_norm = tr.ln_f
            self.head = tr.ff_out if "ff_out" in tr else (lambda h: F.linear(h, tr.wte.weight))
        else:  # Dream, LLaDA-MoE
            self.embed = model.model.embed_tokens
            self.final_norm = model.model.norm
            self.head = model.lm_head

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) positions from the 0/1 padding mask (batch, seq)."""
        batch, seq = mask.shape
        if self.family == "dream":
            return (mask.long().cumsum(1) - 1).clamp(min=0)
        return torch.arange(seq).expand(batch, seq)

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (batch, seq, head_dim) in float32: frequencies theta^(-2i/d), the halves repeated."""
        inv = self.theta ** (-torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        ang = positions.float()[..., None] * inv
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos(), ang.sin()

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(batch, seq, heads * hd) -> (batch, heads, seq, hd)."""
        b, s, _ = t.shape
        return t.view(b, s, -1, self.hd).transpose(1, 2)

    @staticmethod
    def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE, half split (the first half pairs with the second): t (batch, heads, seq, hd)."""
        half = t.shape[-1] // 2
        t1, t2 = t[..., :half], t[..., half:]
        return t * cos[:, None] + torch.cat([-t2, t1], dim=-1) * sin[:, None]

    def qkv(self, layer: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Fresh q, k (RoPE applied) and v of every row of x (batch, seq, d): (batch, heads, seq, hd)."""
        p = self.layers[layer]
        h = p.attn_norm(x)
        q = self.rotate(self.heads(p.q_proj(h)), cos, sin)
        k = self.rotate(self.heads(p.k_proj(h)), cos, sin)
        return q, k, self.heads(p.v_proj(h))

    def attention(self, layer: int, q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Bidirectional softmax attention of q (batch, heads, n, hd) over K, V (batch, kv_heads, seq, hd),
        keys with keep (batch, seq) False masked; grouped query heads share KV head h // group.
        Returns the out-projected rows (batch, n, d)."""
        group = self.n_heads // self.n_kv
        K, V = K.repeat_interleave(group, dim=1), V.repeat_interleave(group, dim=1)
        scores = q @ K.transpose(-1, -2) / math.sqrt(self.hd)  # (batch, heads, n, seq)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ V  # (batch, heads, n, hd)
        b, h, n, d = out.shape
        return self.layers[layer].out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        p = self.layers[layer]
        return p.mlp(p.ffn_norm(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_norm(x))


@dataclass
class _Layer:
    K: torch.Tensor  # (batch, kv_heads, seq, hd), RoPE applied
    V: torch.Tensor
    attn: torch.Tensor  # (batch, seq, d): every row's cached attention delta
    ffn: torch.Tensor


@dataclass
class StepRecord:
    """What the reference decided at one step (for failure messages and coverage checks)."""

    refresh_prompt: bool
    refresh_response: bool
    triggered: bool = False  # the response refresh came from the drift trigger
    since: int = 0  # steps since the last response refresh, counting this one (0 on step 0)
    committed: float = 0.0  # tokens unmasked per row since the last response refresh, batch mean (response_clock)
    drift: float = 0.0
    min_margin: float = math.inf  # smallest top-k boundary gap of the step's selections
    selected: dict = field(default_factory=dict)  # layer -> (batch, R) bool, the recomputed response rows


class ReferenceFeatureCache:
    """One generation of the feature cache (policy "feature"): call it once per denoising step with
    the step's ids (batch, seq); it returns the logits of rows [lo, hi) (batch, hi - lo, vocab).

    prompt_len / block_length: what the sampler declares (reset_cache(prompt_length=, block_length=)).
    reports_commits: the sampler reports the tokens it commits (the threshold / factor rules and a replay
    do, the fixed schedule does not), so response_clock "tokens" applies.
    """

    def __init__(self, model: nn.Module, config: CacheConfig, prompt_len: int, block_length: int | None = None,
                 reports_commits: bool = False):
        if config.is_block:
            raise ValueError(f"ReferenceFeatureCache models policy='feature', got {config.policy!r}: "
                             "use tests.reference_block_cache.ReferenceBlockCache.")
        self.m = PlainModel(model)
        self.cfg = config
        self.mask_id = model.config.mask_token_id
        self.P_tok = prompt_len  # first generated column
        self.P = prompt_len - (self.m.shift if config.shifted_row == "response" else 0)  # first cached response row
        self.block_length = block_length
        self.step = 0
        self.since_response = 0  # steps since the last response refresh, as of the last step
        # response_clock "tokens" counts tokens only where the sampler reports what it commits
        self.counted = config.response_clock == "tokens" and reports_commits
        self.refresh_masked: torch.Tensor | None = None  # (batch,) masks per row at the last response refresh
        self.prev_drift = 0.0
        self.refresh_tokens: torch.Tensor | None = None
        self.cache: list[_Layer] = []
        self.records: list[StepRecord] = []

    # --- the schedule ---------------------------------------------------------------------------
    def _plan(self, masked: torch.Tensor) -> tuple[bool, bool, bool]:
        """(refresh_prompt, refresh_response, triggered) of the current step; masked: (batch,) mask tokens
        left in each row's response."""
        s, c = self.step, self.cfg
        prompt = s == 0 if c.prompt_interval is None else s % c.prompt_interval == 0
        if s == 0:
            return True, True, False
        since = self.since_response + 1  # counting this step
        # Kr steps since the last response refresh, or ("tokens", counted) Kr tokens unmasked since it per
        # row on average over the batch: the masks a row had then minus those it has now
        committed = float((self.refresh_masked - masked).double().mean()) if self.counted else 0.0
        self.clock = (since, committed)
        due = since >= c.response_interval or committed >= c.response_interval
        if c.response_drift_threshold is None:
            return prompt, due, False
        triggered = not due and since >= c.response_min_interval and self.prev_drift >= c.response_drift_threshold
        return prompt, due or triggered, triggered

    def _window(self) -> int:
        return self.cfg.frontier_window or self.block_length or DEFAULT_WINDOW

    def _count(self, layer: int, R: int) -> int:
        """Response rows a partial layer recomputes per batch row."""
        ratio = self.cfg.transfer_ratio if self.cfg.layer_ratios is None else self.cfg.layer_ratios[layer]
        k = int(R * ratio)
        if self.cfg.selection == "frontier" and self.cfg.frontier_only:
            k = min(k, self._window(), R)
        return k

    def _priority(self, ids: torch.Tensor, R: int) -> torch.Tensor | None:
        """(batch, R) frontier levels over the cached response rows, or None ("paper")."""
        if self.cfg.selection != "frontier":
            return None
        tokens = ids[:, self.P_tok:]  # (batch, G) generated region
        batch, G = tokens.shape
        offset = R - G  # 1 when the last prompt row is cached with the response
        window = self._window()
        aligned = self.block_length is not None and self.cfg.frontier_window is None
        prio = torch.zeros(batch, R)
        now = tokens.tolist()
        then = None if self.refresh_tokens is None else self.refresh_tokens.tolist()
        for b in range(batch):
            masked = [j for j in range(G) if now[b][j] == self.mask_id]
            for j in range(G):
                if then is not None and now[b][j] != then[b][j]:
                    prio[b, j + offset] = 1
            if not masked:
                continue
            start = masked[0] // window * window if aligned else masked[0]
            for j in range(start, min(start + window, G)):
                prio[b, j + offset] = 2
                if self.m.shift and j + offset - 1 >= 0:  # the row whose logits predict token j
                    prio[b, j + offset - 1] = 2
        return prio

    # --- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
        batch, seq = ids.shape
        P, R = self.P, seq - self.P
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        keep = mask.bool()
        cos, sin = self.m.rope_tables(self.m.positions(mask))
        masked = (ids[:, self.P_tok:] == self.mask_id).sum(dim=1)  # (batch,)
        self.clock = (0, 0.0)
        refresh_prompt, refresh_response, triggered = self._plan(masked)
        rec = StepRecord(refresh_prompt, refresh_response, triggered, *self.clock)
        if refresh_response:
            self.refresh_masked = masked
        prio = None if refresh_response else self._priority(ids, R)
        if refresh_response and self.cfg.selection == "frontier":
            self.refresh_tokens = ids[:, self.P_tok:].clone()
        layer_drifts = []

        x = self.m.embed(ids)  # (batch, seq, d)
        for i in range(len(self.m.layers)):
            q, k, v = self.m.qkv(i, x, cos, sin)
            if self.step == 0:
                self.cache.append(_Layer(k.clone(), v.clone(), torch.zeros_like(x), torch.zeros_like(x)))
            c = self.cache[i]
            fresh = torch.zeros(batch, seq, dtype=torch.bool)  # rows recomputed at this layer
            fresh[:, :P] = refresh_prompt
            if refresh_response or i == 0:
                fresh[:, P:] = True
            else:
                n = self._count(i, R)
                if n > 0:
                    sim = _cosine(v[:, :, P:], c.V[:, :, P:])  # (batch, R), float64
                    layer_drifts.append(float((1 - sim).mean()))
                    score = sim if prio is None else sim - 3.0 * prio.double()
                    order = score.argsort(dim=1, stable=True)
                    for b in range(batch):
                        fresh[b, P + order[b, :n]] = True
                    if n < R:
                        ranked = score.sort(dim=1).values
                        rec.min_margin = min(rec.min_margin, float((ranked[:, n] - ranked[:, n - 1]).min()))
                    rec.selected[i] = fresh[:, P:].clone()
                    c.V[:, :, P:] = v[:, :, P:]  # every response row's fresh V
            col = fresh[:, None, :, None]  # over (batch, heads, seq, hd)
            c.K = torch.where(col, k, c.K)
            c.V = torch.where(col, v, c.V)
            attn = self.m.attention(i, q, c.K, c.V, keep)  # every query, against the updated cache
            c.attn = torch.where(fresh[..., None], attn, c.attn)
            x = x + c.attn
            c.ffn = torch.where(fresh[..., None], self.m.ffn(i, x), c.ffn)
            x = x + c.ffn
        logits = self.m.logits(x)

        rec.drift = sum(layer_drifts) / len(layer_drifts) if layer_drifts else 0.0
        self.records.append(rec)
        self.prev_drift = rec.drift
        self.since_response = 0 if refresh_response else self.since_response + 1
        self.step += 1
        lo, hi = rows or (0, seq)
        return logits[:, lo:hi]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token over all heads: (batch, heads, R, hd) x2 -> (batch, R), float64."""
    a, b = a.double().transpose(1, 2).flatten(2), b.double().transpose(1, 2).flatten(2)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


class ReferenceModel(nn.Module):
    """The reference behind a model's call signature, so the samplers can drive it:
    model(ids, attention_mask=, logits_to_keep=slice(lo, hi)).logits. Every call is recorded
    (ids, mask, rows, logits) for step-by-step comparison with the engine."""

    def __init__(self, model: nn.Module, cache):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.cache = cache
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, tuple[int, int], torch.Tensor]] = []

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, logits_to_keep=None):
        seq = input_ids.shape[1]
        if logits_to_keep is not None and not isinstance(logits_to_keep, slice):
            raise TypeError(f"ReferenceModel takes logits_to_keep=None or a slice (as our samplers do), got {logits_to_keep!r}.")
        rows = (0, seq) if logits_to_keep is None else logits_to_keep.indices(seq)[:2]
        logits = self.cache(input_ids, attention_mask, rows)
        self.calls.append((input_ids.clone(), attention_mask, rows, logits.clone()))
        return _Output(logits)


@dataclass
class _Output:
    logits: torch.Tensor
