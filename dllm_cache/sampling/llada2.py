"""LLaDA 2.x sampling: the official block-diffusion generate, with LLaDA2.1's token editing, cached or not.

The official loop (LLaDA2MoeModelLM.generate in inclusionAI's modelling code, read for facts):
- the sequence is prompt + gen_length masks, rounded up to whole blocks of `block_length` columns aligned at
  column 0; decoding starts at the block holding the prompt's end (its prompt columns are kept as they are);
- each block gets up to `steps` steps (at most gen_length // minimal_topk); step i may unmask
  num_transfer[i] tokens, the block's length spread evenly over the steps; a step unmasks every masked
  token whose probability exceeds `threshold` when there are at least num_transfer[i] of them, else the
  num_transfer[i] most probable (the "minimal top-k fallback"); the block ends once it has no mask;
- the model sees the sequence up to the end of the current block, with block-causal attention;
- temperature 0 decodes greedily (argmax); otherwise temperature, top_k, top_p, then a categorical draw;
- after each block, generation stops once an end token was decoded (every row of the batch, here);
  `stop_at_eos` (the official `eos_early_stop`) also stops a row inside a block as soon as an end token is
  decoded with nothing masked before it.
LLaDA2.1's token editing (SGLang's "JointThreshold" algorithm, read for facts), with `edit_threshold`: each
step (greedy) unmasks the masked tokens above `threshold` (at least the most probable one) and also
rewrites already decoded tokens of the block (not prompt columns) whose argmax differs from them with
probability above `edit_threshold`; once the block has no mask it may keep editing for `max_post_edit_steps`
steps; a row's block ends when a step changes nothing.

Our deliberate differences: the mask token is never sampled (its logit is -inf, as in our other samplers;
upstream may "unmask" into [MASK]); batches (upstream: one prompt) with left padding, where rows share block
boundaries (a row equals its own run when its padding is a multiple of block_length) and positions count
from each row's first real token; the end of an answer is its first end token in the generated columns
(upstream's in-block check also looks at the prompt). The result is (batch, prompt_len + gen_length):
after a row's first end token every column holds the end token (upstream returns the tokens up to it).

With the cache enabled (dllm_cache.enable_cache), committed blocks' K/V are kept and each step computes only
the current block (dllm_cache.engine.block_causal); CacheConfig(policy="feature") adds the feature cache
inside the block.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from dllm_cache.hooks import adapter_for

from ..engine.block_causal import BlockCausalCache
from ..engine.patch import _state, is_cache_enabled
from .loop import mask_id_of
from .options import as_int, as_number, check_inputs, to_left_padding
from .trace import DecodeTrace, ReplaySchedule
from .unmasking import topk_rows

__all__ = ["llada2_generate", "num_transfer_tokens"]


def steps_per_block(total_steps: int, gen_length: int, block_length: int) -> int:
    """LLaDA 2.x's sampler counts `steps` per block (the official meaning); the CLI, the server and lm-eval take
    steps over the whole answer, as for the other families: the same total spread over the answer's blocks,
    rounded up, at least 1."""
    blocks = max(1, -(-gen_length // block_length))
    return max(1, -(-total_steps // blocks))


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """The official per-step budget: block_length spread over `steps`, the remainder on the first steps."""
    base, extra = divmod(block_length, steps)
    return [base + (i < extra) for i in range(steps)]


def _filtered(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Logits (..., vocab) with all but the top_k, then outside the top_p nucleus, set to -inf."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        outside = ordered.softmax(-1).cumsum(-1) > top_p
        outside[..., 1:] = outside[..., :-1].clone()
        outside[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), -math.inf)
    return logits


def sample_block(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their probabilities), each (batch, B), from block logits (batch, B, vocab) in float32."""
    logits = logits.float()
    logits[..., mask_id] = -math.inf  # never "unmask" into the mask token
    if temperature == 0:
        probs = _filtered(logits, top_k, top_p).softmax(-1)
        tokens = probs.argmax(-1)
    else:
        probs = _filtered(logits / temperature, top_k, top_p).softmax(-1)
        tokens = torch.multinomial(probs.flatten(0, 1), 1).view(probs.shape[:-1])
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def _eos_ids(model: nn.Module, eos_id: int | list[int] | None) -> list[int]:
    ids = eos_id if eos_id is not None else getattr(model.config, "eos_token_id", None)
    return [ids] if isinstance(ids, int) else [int(i) for i in (ids or [])]


def _is_eos(x: torch.Tensor, eos: list[int]) -> torch.Tensor:
    return torch.isin(x, torch.tensor(eos, device=x.device)) if eos else torch.zeros_like(x, dtype=torch.bool)


def block_mask(hi: int, block_length: int, key_mask: torch.Tensor | None, dtype: torch.dtype, device) -> torch.Tensor:
    """The uncached forward's 4-D additive mask (batch or 1, 1, hi, hi): 0 where a query may attend (its own and
    earlier blocks, real keys; a query always sees itself), the dtype's minimum elsewhere (the official loop
    uses -inf; the minimum keeps a block of padding alone finite)."""
    block = torch.arange(hi, device=device) // block_length
    allowed = (block[None, :] <= block[:, None])[None, None]
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, None, :hi]) | torch.eye(hi, dtype=torch.bool, device=device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


class _Forward:
    """Logits of block [lo, hi): through the block-causal cache when enabled, else the model's own forward on
    columns [0, hi) with the 4-D block mask (as the official loop calls it)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, block_length: int, positions: torch.Tensor,
                 key_mask: torch.Tensor | None, mask_id: int, prompt_len: int):
        self.model, self.block_length, self.positions, self.key_mask = model, block_length, positions, key_mask
        self.dtype = next(model.parameters()).dtype
        self.cache = None
        if is_cache_enabled(model):
            state = _state(model)
            self.cache = BlockCausalCache(model, adapter_for(model), state.config, batch=x.shape[0], total=x.shape[1],
                                          block_length=block_length, positions=positions, key_mask=key_mask,
                                          stats=state.stats, mask_id=mask_id, prompt_len=prompt_len)

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.block_logits(x, lo, hi)
        mask = block_mask(hi, self.block_length, self.key_mask, self.dtype, x.device)
        return self.model(x[:, :hi], attention_mask=mask, position_ids=self.positions[:, :hi]).logits[:, lo:hi]


def _check(gen_length, block_length, steps, temperature, top_k, top_p, threshold, minimal_topk, edit_threshold,
           max_post_edit_steps, schedule, trace, stop_at_eos):
    gen_length, block_length = as_int(gen_length, "gen_length"), as_int(block_length, "block_length")
    steps, minimal_topk = as_int(steps, "steps"), as_int(minimal_topk, "minimal_topk")
    temperature = as_number(temperature, "temperature", 0)
    top_k = as_int(top_k, "top_k", 0, optional=True)
    top_p = as_number(top_p, "top_p", 0, 1, low_open=True, optional=True)
    threshold = as_number(threshold, "threshold", 0, 1, optional=True)
    edit_threshold = as_number(edit_threshold, "edit_threshold", 0, 1, optional=True)
    max_post_edit_steps = as_int(max_post_edit_steps, "max_post_edit_steps", 0)
    if edit_threshold is not None:
        if temperature != 0:
            raise ValueError("generate(): token editing (edit_threshold=) decodes greedily, as LLaDA2.1's JointThreshold "
                             f"does; got temperature={temperature}. Use temperature=0 or edit_threshold=None.")
        if threshold is None:
            raise ValueError("generate(): token editing (edit_threshold=) needs threshold= (its mask-to-token threshold).")
        if schedule is not None:
            raise ValueError("generate(): schedule= replays a fixed count of unmasked tokens per step; token editing "
                             "changes decoded tokens too. Pass one of them.")
        if stop_at_eos:
            raise ValueError("generate(): stop_at_eos (the in-block early stop) is not defined with token editing (a later "
                             "edit may rewrite the end token); generation still stops after a block that holds one.")
    if schedule is not None and not isinstance(schedule, ReplaySchedule):
        raise TypeError(f"generate(): schedule must be a dllm_cache.ReplaySchedule, got {type(schedule).__name__}.")
    if trace is not None and not isinstance(trace, DecodeTrace):
        raise TypeError(f"generate(): trace must be a dllm_cache.DecodeTrace, got {type(trace).__name__}.")
    return (gen_length, block_length, steps, temperature, top_k, top_p, threshold, minimal_topk, edit_threshold,
            max_post_edit_steps)


@torch.no_grad()
def llada2_generate(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 2048,
    block_length: int = 32,
    steps: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    threshold: float | None = 0.95,
    minimal_topk: int = 1,
    stop_at_eos: bool = False,
    eos_id: int | list[int] | None = None,
    edit_threshold: float | None = None,
    max_post_edit_steps: int = 16,
    trace: DecodeTrace | None = None,
    schedule: ReplaySchedule | None = None,
    mask_id: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """LLaDA 2.x block diffusion -> (batch, prompt_len + gen_length); defaults are the official generate's.

    `steps`: denoising steps PER BLOCK (the official meaning; the LLaDA and Dream samplers count steps over the
    whole answer). `threshold` None: the fixed per-step budget alone. `edit_threshold`: LLaDA2.1's token
    editing (see the module docstring), None: off (LLaDA2.0). `stop_at_eos`: the official eos_early_stop.
    `schedule`: replay recorded per-step counts (the prompt must then fill whole blocks: blocks of the schedule
    are the generated blocks); the end token then stops nothing. `trace`: record the tokens unmasked per step.
    """
    (gen_length, block_length, steps, temperature, top_k, top_p, threshold, minimal_topk, edit_threshold,
     max_post_edit_steps) = _check(gen_length, block_length, steps, temperature, top_k, top_p, threshold, minimal_topk,
                                   edit_threshold, max_post_edit_steps, schedule, trace, stop_at_eos)
    if input_ids is None:
        raise ValueError("generate(): LLaDA 2.x takes the prompt as input_ids (batch, prompt_len).")
    mask_id = mask_id_of(model, mask_id)
    check_inputs(model, input_ids, attention_mask, gen_length, mask_id)
    ids, pad = to_left_padding(input_ids, attention_mask)
    batch, P = ids.shape
    device = ids.device
    num_blocks = math.ceil((P + gen_length) / block_length)
    total = num_blocks * block_length
    first = P // block_length
    if schedule is not None:
        if P % block_length or schedule.gen_length != gen_length or schedule.block_length != block_length:
            raise ValueError(f"generate(): a replay schedule needs the prompt ({P}) to fill whole blocks of {block_length} "
                             f"and gen_length={gen_length}, block_length={block_length} as recorded (schedule: "
                             f"gen_length={schedule.gen_length}, block_length={schedule.block_length}).")
        schedule.prepare(batch, device)
    x = torch.full((batch, total), mask_id, dtype=torch.long, device=device)
    x[:, :P] = ids
    key_mask = None
    if pad is not None and not bool(pad.all()):
        key_mask = torch.cat([pad.bool(), torch.ones(batch, total - P, dtype=torch.bool, device=device)], dim=1)
    positions = adapter_for(model).positions(key_mask, batch, total, device)
    forward = _Forward(model, x, block_length, positions, key_mask, mask_id, P)
    eos = _eos_ids(model, eos_id)
    steps = min(steps, max(gen_length // minimal_topk, 1))
    budget = num_transfer_tokens(block_length, steps)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)  # rows whose answer ended inside a block
    cols = torch.arange(total, device=device)
    if trace is not None:
        trace.begin(num_blocks - first)
    for b in tqdm(range(first, num_blocks), disable=not progress, desc="llada2", leave=False):
        lo, hi = b * block_length, (b + 1) * block_length
        if edit_threshold is not None:
            _edit_block(forward, x, lo, hi, P, mask_id, threshold, edit_threshold, max_post_edit_steps, stopped)
        else:
            n_steps = steps if schedule is None else schedule.block_steps[b - first]
            for i in range(n_steps):
                block = x[:, lo:hi]
                active = (block == mask_id) & ~stopped[:, None]
                if not bool(active.any()):
                    break
                tokens, prob = sample_block(forward(x, lo, hi), temperature, top_k, top_p, mask_id)
                conf = prob.masked_fill(~active, -math.inf)
                if schedule is not None:
                    picked = topk_rows(conf, schedule.counts[b - first, :, i], schedule.kmax[b - first][i])
                else:
                    want = torch.minimum(active.sum(1), torch.tensor(budget[i], device=device))
                    picked = topk_rows(conf, want, budget[i])
                    if threshold is not None:
                        high = conf > threshold
                        picked = torch.where((high.sum(1) >= budget[i])[:, None], high, picked)
                picked &= active
                x[:, lo:hi] = torch.where(picked, tokens, block)
                if trace is not None:
                    trace.record(b - first, picked.sum(1), active.any(1))
                if stop_at_eos and eos and schedule is None:
                    stopped |= _answer_complete(x[:, P:hi], mask_id, eos) & (picked & _is_eos(tokens, eos)).any(1)
        if schedule is not None:
            if schedule.finished_after(b - first):
                break
        elif eos and bool((_is_eos(x[:, P:hi], eos).any(1) | stopped).all()):
            break
    if trace is not None:
        trace.end(stopped)
    out = x[:, : P + gen_length]
    if eos:  # every column after a row's first generated end token holds the end token
        gen_eos = (_is_eos(out, eos) & (cols[: P + gen_length] >= P)).int()
        out = torch.where(gen_eos.cumsum(1) - gen_eos > 0, eos[0], out)
    if attention_mask is not None and ids is not input_ids:
        out = torch.cat([input_ids, out[:, P:]], dim=1)  # the prompt as the caller padded it
    return out


def _answer_complete(gen: torch.Tensor, mask_id: int, eos: list[int]) -> torch.Tensor:
    """(batch,) bool: the generated columns so far hold an end token with nothing masked before the first one."""
    is_eos = _is_eos(gen, eos)
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], gen.shape[1], dtype=torch.long))
    before = torch.arange(gen.shape[1], device=gen.device)[None, :] < first[:, None]
    return is_eos.any(1) & ~((gen == mask_id) & before).any(1)


def _edit_block(forward: _Forward, x: torch.Tensor, lo: int, hi: int, P: int, mask_id: int, threshold: float,
                edit_threshold: float, max_post_edit_steps: int, stopped: torch.Tensor) -> None:
    """One block of LLaDA2.1's joint threshold decoding (mask-to-token + token-to-token edits), in place on x."""
    batch, B = x.shape[0], hi - lo
    prompt_cols = (torch.arange(lo, hi, device=x.device) < P)[None, :]  # (1, B): left padding, so the same for all rows
    done = stopped.clone()
    post = torch.zeros(batch, dtype=torch.long, device=x.device)
    for _ in range(B + max_post_edit_steps + 1):
        if bool(done.all()):
            break
        block = x[:, lo:hi]
        masked = block == mask_id
        tokens, prob = sample_block(forward(x, lo, hi), 0.0, None, None, mask_id)
        has_mask = masked.any(1)
        conf = prob.masked_fill(~masked, -math.inf)
        m2t = (conf > threshold) | topk_rows(conf, has_mask.long(), 1)
        post += (~has_mask & ~done).long()
        done_now = done | (~has_mask & (post > max_post_edit_steps))
        edits = (prob > edit_threshold) & (block != tokens) & ~masked & ~prompt_cols
        change = (m2t | edits) & ~done_now[:, None]
        done.copy_(done_now | ~change.any(1))
        x[:, lo:hi] = torch.where(change, tokens, block)
