"""Samplers for masked diffusion LMs: LLaDA (low-confidence / random remasking, semi-AR blocks,
CFG) and Dream (entropy, maskgit_plus, topk_margin; optional semi-AR blocks). They run unchanged
with or without the cache, which sees ordinary forwards.

Both decode in parallel on request (`threshold=` or `factor=`, Fast-dLLM's rules, see
dllm_cache.sampling.unmasking), stop early once every answer is complete (`stop_at_eos=True`), record how
many tokens each step unmasked (`trace=DecodeTrace()`) and replay such a record (`schedule=`,
dllm_cache.sampling.trace). Host synchronisations: none per step on the fixed schedule (one per LLaDA block),
one per step with a threshold, a factor or the early stop.

Prompts may be left or right padded; `attention_mask` (batch, prompt_len) marks real tokens.
The samplers run on left padding (right-padded rows are rotated first); the output is
(batch, prompt_len + gen_length) with the prompt exactly as given and the generated tokens after it.
A prompt may come as `inputs_embeds` (batch, prompt_len, hidden) instead of ids (LLaDA-V's image +
text prompt; left padded); the prompt columns of the result are then placeholders. Options are
checked (dllm_cache.sampling.options): a misspelled one, or one the model's sampler does not take, is
an error naming the valid ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dllm_cache.hooks import sampler_of

from ..engine.patch import cache_branch, declared_generation, is_cache_enabled, rows_only
from .options import (
    DREAM_ALGS,
    LLADA_REMASKING,
    as_int,
    as_number,
    check_inputs,
    check_options,
    fit_steps,
    to_left_padding,
)
from .prompt import model_inputs, prompt_tokens
from .trace import DecodeTrace, ReplaySchedule
from .unmasking import EarlyStop, Unmasker, tokens_per_step, topk_rows

__all__ = ["dream_generate", "generate", "llada_generate", "tokens_per_step"]


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


def _mask_id(model: nn.Module, mask_id: int | None) -> int:
    mask_id = mask_id if mask_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("No mask token id: pass mask_id=... or set config.mask_token_id.")
    return int(mask_id)


def _logits_of_rows(model: nn.Module, inputs: dict, mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Logits of rows [lo, hi) -> (batch, hi - lo, vocab); `inputs` is input_ids= or inputs_embeds=.
    A cached model is asked for those rows only (logits_to_keep), so it neither computes nor keeps
    the others. An uncached model computes every row; the rows are copied out so the full logits
    are freed now: a view would keep them alive through the next step's forward, two full
    (batch, seq, vocab) tensors at once (2 GiB of the 4k-token peak on LLaDA-8B)."""
    inputs = dict(inputs)
    args = (inputs.pop("input_ids"),) if "input_ids" in inputs else ()  # ids positionally, as forward hooks expect
    if is_cache_enabled(model):
        return model(*args, **inputs, attention_mask=mask, logits_to_keep=slice(lo, hi)).logits
    return rows_only(model(*args, **inputs, attention_mask=mask).logits, lo, hi)


def _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length: int, mask_id: int):
    """(ids the caller gave or placeholders, ids and mask the sampler runs on: left padded)."""
    given_ids = prompt_tokens(input_ids, inputs_embeds, mask_id)
    check_inputs(model, given_ids, attention_mask, gen_length, mask_id, inputs_embeds)
    ids, mask = to_left_padding(given_ids, attention_mask)
    if inputs_embeds is not None and ids is not given_ids:
        raise ValueError("generate(): inputs_embeds must be LEFT padded (right-padded embedded prompts are not "
                         "rotated); pad embedded prompts on the left.")
    return given_ids, ids, mask


def _with_prompt(given_ids: torch.Tensor, used_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x with the caller's prompt as they padded it (the samplers ran on `used_ids`, left padded)."""
    if used_ids is given_ids:
        return x
    return torch.cat([given_ids, x[:, given_ids.shape[1] :]], dim=1)


def _decoding_args(temperature, threshold, factor) -> tuple[float, float | None, float | None]:
    """Checked temperature, threshold (a probability: 0 unmasks a whole block per step, 1 one token
    per row per step) and factor (Fast-dLLM's, > 0)."""
    return (as_number(temperature, "temperature", 0), as_number(threshold, "threshold", 0, 1, optional=True),
            as_number(factor, "factor", 0, low_open=True, optional=True))


def gumbel_argmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Argmax of Gumbel-perturbed logits in float64 (LLaDA's sampling); greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    noise = torch.rand_like(logits).clamp_min(1e-30)
    return (logits.exp() / (-noise.log()) ** temperature).argmax(dim=-1)


def _fill_token(model: nn.Module, eos_id: int | list[int] | None) -> int:
    """The token that fills the rest of a row ended early: the end token, else padding, else 0."""
    ids = eos_id if eos_id is not None else getattr(model.config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    pad = getattr(model.config, "pad_token_id", None)
    return int(ids[0]) if ids else int(pad) if pad is not None else 0


def _unmasker(model: nn.Module, x: torch.Tensor, *, threshold, factor, schedule, stop_at_eos, eos_id, trace,
              mask_id: int, num_blocks: int, block_length: int, gen_length: int) -> Unmasker:
    stop = EarlyStop.for_model(model.config, eos_id, x.device) if stop_at_eos else None
    return Unmasker(threshold=threshold, factor=factor, schedule=schedule, stop=stop, trace=trace, mask_id=mask_id,
                    fill=_fill_token(model, eos_id), num_blocks=num_blocks, block_length=block_length,
                    gen_length=gen_length, batch=x.shape[0], device=x.device)


@torch.no_grad()
def llada_generate(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    factor: float | None = None,
    stop_at_eos: bool = False,
    eos_id: int | list[int] | None = None,
    trace: DecodeTrace | None = None,
    schedule: ReplaySchedule | None = None,
    mask_id: int | None = None,
    progress: bool = False,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLaDA sampling -> (batch, prompt_len + gen_length).

    Per semi-AR block, the fixed schedule unmasks its masks evenly over steps // blocks steps. With
    `threshold`, every masked token of the current block whose confidence exceeds it is unmasked at
    once; with `factor`, the n most confident with (n + 1)(1 - c_n) < factor (at least one per row
    per step either way; the block ends when it is full). `schedule` replays a recorded trace.
    `stop_at_eos`: stop once every row's answer is complete (an end token, `eos_id` or
    config.eos_token_id, decoded with nothing masked before it), the rest filled with it.
    `trace`: record the tokens unmasked per step. With `inputs_embeds` (and input_ids None) the
    prompt columns of the result are placeholders."""
    if remasking not in LLADA_REMASKING:
        raise ValueError(f"remasking must be one of {LLADA_REMASKING}, got {remasking!r}.")
    gen_length, steps = as_int(gen_length, "gen_length"), as_int(steps, "steps")
    steps = fit_steps(steps, gen_length)
    block_length = as_int(block_length, "block_length", optional=True)
    temperature, threshold, factor = _decoding_args(temperature, threshold, factor)
    cfg_scale = as_number(cfg_scale, "cfg_scale", 0)
    mask_id = _mask_id(model, mask_id)
    given_ids, input_ids, attention_mask = _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    block_length = block_length or gen_length
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}).")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks}).")
    steps_per_block = steps // num_blocks
    P = input_ids.shape[1]
    x = _init_sequence(input_ids, gen_length, mask_id)
    full_mask = _full_mask(attention_mask, gen_length)
    prompt_region = torch.zeros_like(x, dtype=torch.bool)
    prompt_region[:, :P] = True
    dec = _unmasker(model, x, threshold=threshold, factor=factor, schedule=schedule, stop_at_eos=stop_at_eos,
                    eos_id=eos_id, trace=trace, mask_id=mask_id, num_blocks=num_blocks, block_length=block_length,
                    gen_length=gen_length)

    def logits_of(seq: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        logits = _logits_of_rows(model, model_inputs(model, seq, inputs_embeds), full_mask, lo, hi)  # (batch, hi - lo, vocab)
        if cfg_scale > 0:
            uncond = seq.masked_fill(prompt_region, mask_id)
            with cache_branch(model, "uncond"):
                un_logits = _logits_of_rows(model, {"input_ids": uncond}, full_mask, lo, hi)
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        return logits

    bar = tqdm(total=steps if dec.fixed else None, disable=not progress, desc="llada", leave=False)
    done = False
    with declared_generation(model, P, block_length):
        for b in range(num_blocks):
            lo, hi = P + b * block_length, P + (b + 1) * block_length
            counts, counts_max = None, None
            if dec.fixed:
                counts = tokens_per_step((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)  # (batch, steps)
                counts_max = counts.max(dim=0).values.tolist()  # one host sync per block, not per step
            for i in range(dec.budget(b, steps_per_block, block_length)):
                # Only the current block can be unmasked: sample and score its columns alone.
                logits = logits_of(x, lo, hi)
                logits[..., mask_id] = -math.inf  # never "unmask" into the mask token
                x0 = gumbel_argmax(logits, temperature)  # (batch, block_length)
                if remasking == "low_confidence":
                    p = F.softmax(logits.float(), dim=-1)
                    conf = p.gather(-1, x0[..., None]).squeeze(-1)
                else:
                    conf = torch.rand(x0.shape, device=x0.device)
                block = x[:, lo:hi]
                block_masked = block == mask_id
                conf = torch.where(block_masked, conf, torch.full_like(conf, -math.inf))
                picked = dec.pick(b, i, conf, None if counts is None else counts[:, i],
                                  None if counts_max is None else counts_max[i]) & block_masked
                x[:, lo:hi] = torch.where(picked, x0, block)
                block_full, done = dec.after_step(b, x[:, lo:hi], x[:, P:], block_masked, picked)
                bar.update(1)
                if done or block_full:
                    break
            if done or dec.after_block(b, x[:, P:]):
                break
    dec.end()
    bar.close()
    return _with_prompt(given_ids, input_ids, x)


def _filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """top_p, then top_k, as Dream's sample_tokens (the reverse order, transformers', keeps a different
    set when both are given: tests/test_reference_samplers.py compares with Dream's order)."""
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return logits


def _dream_sample(logits: torch.Tensor, alg: str, temperature: float, top_p, top_k) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, tokens), each (...), for logits (..., vocab): sampled (or greedy) tokens and the
    alg's confidence in them (probability for maskgit_plus, top-2 margin, negative entropy)."""
    shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1])
    if temperature > 0:
        logits = logits / temperature
    probs = _filter_logits(logits.float(), top_p, top_k).softmax(-1)
    if temperature > 0:
        tokens = torch.multinomial(probs, 1).squeeze(-1)
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        conf, tokens = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (probs * probs.clamp_min(1e-10).log()).sum(-1)
    return conf.reshape(shape), tokens.reshape(shape)


def _dream_logits(model: nn.Module, inputs: dict, mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """(batch, hi - lo, vocab): the logits that predict tokens lo .. hi-1. Dream's logits are shifted:
    row j predicts token j + 1, and row 0 stands in for token 0 itself."""
    if lo > 0:
        return _logits_of_rows(model, inputs, mask, lo - 1, hi - 1)
    logits = _logits_of_rows(model, inputs, mask, 0, max(hi - 1, 1))
    return torch.cat([logits[:, :1], logits[:, : hi - 1]], dim=1)


def _dream_count_bound(window: int, steps: int, eps: float) -> list[int]:
    """Host-side upper bound on each step's count of the fixed schedule, so top-k needs no sync:
    a step unmasks int(n * (1 - s / t)) of the n <= window masks left (float32 on the device: the
    +1 covers its rounding), the last step all of them."""
    ts = [1 + (eps - 1) * i / steps for i in range(steps + 1)]
    return [window if i == steps - 1 else min(window, int(window * (1 - ts[i + 1] / ts[i])) + 1) for i in range(steps)]


@torch.no_grad()
def dream_generate(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    threshold: float | None = None,
    factor: float | None = None,
    stop_at_eos: bool = False,
    eos_id: int | list[int] | None = None,
    trace: DecodeTrace | None = None,
    schedule: ReplaySchedule | None = None,
    mask_id: int | None = None,
    progress: bool = False,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dream sampling -> (batch, prompt_len + gen_length). Dream's logits at i predict token i+1.

    Without `block_length` the whole response is one window, as in Dream's own sampler; with it,
    semi-AR blocks are decoded in order, each over steps // blocks steps of Dream's schedule (as
    Fast-dLLM's Dream sampler). `threshold` / `factor` / `stop_at_eos` / `trace` / `schedule`: as in
    llada_generate; with threshold, factor or schedule tokens are ranked by their probability (the
    `alg` confidence ranks the fixed schedule)."""
    if alg not in DREAM_ALGS:
        raise ValueError(f"alg must be one of {DREAM_ALGS}, got {alg!r}.")
    gen_length, steps = as_int(gen_length, "gen_length"), as_int(steps, "steps")
    steps = fit_steps(steps, gen_length)
    block_length = as_int(block_length, "block_length", optional=True)
    temperature, threshold, factor = _decoding_args(temperature, threshold, factor)
    eps = as_number(eps, "eps", 0, 1, low_open=True)
    top_p = as_number(top_p, "top_p", 0, 1, low_open=True, optional=True)
    top_k = as_int(top_k, "top_k", 0, optional=True)
    alg_temp = as_number(alg_temp, "alg_temp", 0, optional=True)
    if alg == "origin" and (threshold is not None or factor is not None or schedule is not None):
        raise ValueError("alg='origin' unmasks tokens at random times; threshold=, factor= and schedule= rank tokens "
                         "by confidence: use alg='maskgit_plus', 'entropy' or 'topk_margin'.")
    window = block_length or gen_length
    if window < 1 or gen_length % window:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}).")
    num_blocks = gen_length // window
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks}).")
    steps_per_block = steps // num_blocks
    mask_id = _mask_id(model, mask_id)
    given_ids, input_ids, attention_mask = _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    P = input_ids.shape[1]
    x = _init_sequence(input_ids, gen_length, mask_id)
    full_mask = _full_mask(attention_mask, gen_length)
    timesteps = torch.linspace(1, eps, steps_per_block + 1, device=x.device)
    bound = _dream_count_bound(window, steps_per_block, eps)
    dec = _unmasker(model, x, threshold=threshold, factor=factor, schedule=schedule, stop_at_eos=stop_at_eos,
                    eos_id=eos_id, trace=trace, mask_id=mask_id, num_blocks=num_blocks, block_length=window,
                    gen_length=gen_length)
    bar = tqdm(total=steps if dec.fixed else None, disable=not progress, desc="dream", leave=False)
    done = False
    with declared_generation(model, P, block_length):
        for b in range(num_blocks):
            lo, hi = P + b * window, P + (b + 1) * window
            for i in range(dec.budget(b, steps_per_block, window)):
                logits = _dream_logits(model, model_inputs(model, x, inputs_embeds), full_mask, lo, hi)  # (batch, W, vocab)
                logits[..., mask_id] = -math.inf
                block = x[:, lo:hi]  # (batch, W)
                masked = block == mask_id
                if dec.fixed:
                    t, s = timesteps[i], timesteps[i + 1]
                if alg == "origin":
                    p_transfer = 1 - s / t if i < steps_per_block - 1 else 1.0
                    picked = masked & (torch.rand(masked.shape, device=x.device) < p_transfer)
                    tokens = _dream_sample(logits, "maskgit_plus", temperature, top_p, top_k)[1]
                else:
                    conf, tokens = _dream_sample(logits, alg if dec.fixed else "maskgit_plus", temperature, top_p, top_k)
                    conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
                    if not dec.fixed:
                        picked = dec.pick(b, i, conf)
                    else:
                        n_masked = masked.sum(dim=1)
                        counts = (n_masked.float() * (1 - s / t)).long() if i < steps_per_block - 1 else n_masked
                        picked = _alg_temp_pick(conf, counts, alg_temp) if alg_temp else topk_rows(conf, counts, bound[i])
                picked = picked & masked
                x[:, lo:hi] = torch.where(picked, tokens, block)
                block_full, done = dec.after_step(b, x[:, lo:hi], x[:, P:], masked, picked)
                bar.update(1)
                if done or block_full:
                    break
            if done or dec.after_block(b, x[:, P:]):
                break
    dec.end()
    bar.close()
    return _with_prompt(given_ids, input_ids, x)


def _alg_temp_pick(conf: torch.Tensor, counts: torch.Tensor, alg_temp: float) -> torch.Tensor:
    """Dream's alg_temp: draw each row's `counts` tokens from softmax(confidence / alg_temp)."""
    probs = (conf / alg_temp).softmax(-1)
    picked = torch.zeros_like(conf, dtype=torch.bool)
    for row in range(conf.shape[0]):  # multinomial draws differ per row in count
        k = int(counts[row])
        if k:
            picked[row, torch.multinomial(probs[row], k)] = True
    return picked


SAMPLERS = {"llada": llada_generate, "dream": dream_generate}


def generate(
    model: nn.Module, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **options
) -> torch.Tensor:
    """Generate with the sampler of the model's family -> (batch, prompt_len + gen_length).

    The prompt is `input_ids` (batch, P), or `inputs_embeds=` (batch, P, hidden) with input_ids None.
    options: those of `llada_generate` or `dream_generate` (both: gen_length, steps, block_length,
    temperature, threshold, factor, stop_at_eos, eos_id, trace, schedule, mask_id, progress;
    LLaDA: cfg_scale, remasking; Dream: top_p, top_k, alg, alg_temp, eps; block_length on Dream:
    None = its own single window). A misspelled option, or one only the other family uses, is a
    ValueError naming the valid ones; None (and cfg_scale=0) count as "not set", so code serving
    both families may pass its defaults.
    """
    family = sampler_of(model)
    return SAMPLERS[family](model, input_ids, attention_mask, **check_options(family, options, SAMPLERS))
