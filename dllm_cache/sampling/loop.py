"""The block/step loop both samplers share: a rule says how one step scores and samples its rows.

The loop owns what LLaDA and Dream decode alike: the response starts fully masked after the
(left-padded) prompt, semi-AR windows are decoded in order, each over a budget of steps (the fixed
schedule, or threshold / factor / replay / early stop through the Unmasker), inside a declared
generation, with a progress bar. A `StepRule` (sampling/llada.py, sampling/dream.py) writes one
step: the window's sampled tokens and which masked ones to unmask. The loop adds no host
synchronisation and draws no random number: every draw is the rule's, in its order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine.patch import declared_generation, note_committed
from .options import check_inputs, to_left_padding
from .prompt import prompt_tokens
from .trace import DecodeTrace, ReplaySchedule
from .unmasking import EarlyStop, Unmasker

# (model, inputs, full attention mask or None, lo, hi) -> logits of rows [lo, hi): (batch, hi - lo, vocab)
RowLogits = Callable[[nn.Module, dict, "torch.Tensor | None", int, int], torch.Tensor]


@dataclass
class Run:
    """What a rule's step may read: the model, the sequence x (batch, P + gen) it writes into through
    the loop, the prompt length P, the mask over prompt and response (None if nothing is padded),
    the prompt embeddings (or None), the Unmasker and the row-logits function. `rows` comes from the
    caller (generate._logits_of_rows, looked up per call) so the one place that asks a model for
    logits stays in generate.py, where tests swap it or its is_cache_enabled."""

    model: nn.Module
    x: torch.Tensor
    P: int
    full_mask: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    dec: Unmasker
    mask_id: int
    rows: RowLogits


class StepRule:
    """One sampler's step. Override `step`; `start` and `begin_block` prepare per-run and per-window
    state (a host sync there is once per run or block, never per step)."""

    desc = "sample"

    def start(self, run: Run) -> None:
        """Called once, before the first window (a draw here would shift every later one: draw nothing)."""

    def begin_block(self, run: Run, b: int, lo: int, hi: int) -> None:
        """Called before window b, columns [lo, hi) of x."""

    def step(self, run: Run, b: int, i: int, lo: int, hi: int, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, picked), each (batch, hi - lo): sampled tokens of the window and the positions to
        unmask (the loop keeps only masked ones). `masked` (batch, hi - lo) marks the window's masks."""
        raise NotImplementedError


def mask_id_of(model: nn.Module, mask_id: int | None) -> int:
    mask_id = mask_id if mask_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("No mask token id: pass mask_id=... or set config.mask_token_id.")
    return int(mask_id)


def prepare_prompt(model, input_ids, inputs_embeds, attention_mask, gen_length: int, mask_id: int):
    """(ids the caller gave or placeholders, ids and mask the sampler runs on: left padded)."""
    given_ids = prompt_tokens(input_ids, inputs_embeds, mask_id)
    check_inputs(model, given_ids, attention_mask, gen_length, mask_id, inputs_embeds)
    ids, mask = to_left_padding(given_ids, attention_mask)
    if inputs_embeds is not None and ids is not given_ids:
        raise ValueError("generate(): inputs_embeds must be LEFT padded (right-padded embedded prompts are not "
                         "rotated); pad embedded prompts on the left.")
    return given_ids, ids, mask


def windows(gen_length: int, block_length: int | None, steps: int) -> tuple[int, int]:
    """(window, num_blocks): semi-AR windows of `block_length` columns (None: one window of the whole
    response), checked to tile gen_length and to share `steps` evenly."""
    window = block_length or gen_length
    if gen_length % window:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({window}).")
    num_blocks = gen_length // window
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks}).")
    return window, num_blocks


def _full_mask(attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """Extend a prompt mask (batch, P) over the response (always real tokens); None if nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    ones = attention_mask.new_ones(attention_mask.shape[0], gen_length)
    return torch.cat([attention_mask, ones], dim=1)


def _init_sequence(input_ids: torch.Tensor, gen_length: int, mask_id: int) -> torch.Tensor:
    x = torch.full((input_ids.shape[0], input_ids.shape[1] + gen_length), mask_id, dtype=torch.long, device=input_ids.device)
    x[:, : input_ids.shape[1]] = input_ids
    return x


def _with_prompt(given_ids: torch.Tensor, used_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x with the caller's prompt as they padded it (the samplers ran on `used_ids`, left padded)."""
    if used_ids is given_ids:
        return x
    return torch.cat([given_ids, x[:, given_ids.shape[1] :]], dim=1)


def _fill_token(model: nn.Module, eos_id: int | list[int] | None) -> int:
    """The token that fills the rest of a row ended early: the end token, else padding, else 0."""
    ids = eos_id if eos_id is not None else getattr(model.config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    pad = getattr(model.config, "pad_token_id", None)
    return int(ids[0]) if ids else int(pad) if pad is not None else 0


def decode(
    model: nn.Module,
    rule: StepRule,
    prompt: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    *,
    rows: RowLogits,
    inputs_embeds: torch.Tensor | None,
    gen_length: int,
    steps: int,
    num_blocks: int,
    window: int,
    declared_block: int | None,
    threshold: float | None,
    factor: float | None,
    schedule: ReplaySchedule | None,
    stop_at_eos: bool,
    eos_id: int | list[int] | None,
    trace: DecodeTrace | None,
    mask_id: int,
    progress: bool,
) -> torch.Tensor:
    """Decode gen_length tokens after `prompt` (from prepare_prompt) with `rule` -> (batch, P + gen_length).

    Windows of `window` columns, `steps // num_blocks` fixed steps each; `declared_block` is what the
    cache is told the block length is (None: no semi-AR blocks)."""
    given_ids, input_ids, attention_mask = prompt
    steps_per_block = steps // num_blocks
    P = input_ids.shape[1]
    x = _init_sequence(input_ids, gen_length, mask_id)
    full_mask = _full_mask(attention_mask, gen_length)
    stop = EarlyStop.for_model(model.config, eos_id, x.device) if stop_at_eos else None
    dec = Unmasker(threshold=threshold, factor=factor, schedule=schedule, stop=stop, trace=trace, mask_id=mask_id,
                   fill=_fill_token(model, eos_id), num_blocks=num_blocks, block_length=window,
                   gen_length=gen_length, batch=x.shape[0], device=x.device)
    run = Run(model=model, x=x, P=P, full_mask=full_mask, inputs_embeds=inputs_embeds, dec=dec, mask_id=mask_id, rows=rows)
    rule.start(run)
    bar = tqdm(total=steps if dec.fixed else None, disable=not progress, desc=rule.desc, leave=False)
    done = False
    with declared_generation(model, P, declared_block):
        for b in range(num_blocks):
            lo, hi = P + b * window, P + (b + 1) * window
            rule.begin_block(run, b, lo, hi)
            for i in range(dec.budget(b, steps_per_block, window)):
                block = x[:, lo:hi]  # (batch, window), a view: read before this step writes
                masked = block == mask_id
                tokens, picked = rule.step(run, b, i, lo, hi, masked)
                picked = picked & masked
                x[:, lo:hi] = torch.where(picked, tokens, block)
                block_full, done = dec.after_step(b, x[:, lo:hi], x[:, P:], masked, picked, i)
                if dec.committed is not None:  # host ints: the cache's response clock counts tokens
                    note_committed(model, dec.committed)
                bar.update(1)
                if done or block_full:
                    break
            if done or dec.after_block(b, x[:, P:]):
                break
    dec.end()
    bar.close()
    return _with_prompt(given_ids, input_ids, x)
