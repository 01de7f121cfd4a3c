"""Samplers for masked diffusion LMs: LLaDA (low-confidence / random remasking, semi-AR blocks,
CFG) and Dream (entropy, maskgit_plus, topk_margin; optional semi-AR blocks). They run unchanged
with or without the cache, which sees ordinary forwards. Here the options are checked and the
prompt prepared; one block/step loop (dllm_cache.sampling.loop) decodes, with LLaDA's or Dream's
step rule (sampling/llada.py, sampling/dream.py).

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

import torch
from torch import nn

from dllm_cache.hooks import sampler_of

from ..engine.patch import is_cache_enabled, rows_only

# _dream_count_bound, _dream_sample, _filter_logits and gumbel_argmax are re-exported (tests import them from here)
from .dream import DreamRule, _dream_count_bound, _dream_sample, _filter_logits, shifted_logits  # noqa: F401
from .llada import LLaDARule, gumbel_argmax  # noqa: F401
from .llada2 import llada2_generate
from .loop import decode, mask_id_of, prepare_prompt, windows
from .options import (
    DREAM_ALGS,
    LLADA_REMASKING,
    as_int,
    as_number,
    check_options,
    fit_steps,
)
from .trace import DecodeTrace, ReplaySchedule
from .unmasking import tokens_per_step

__all__ = ["dream_generate", "generate", "llada2_generate", "llada_generate", "tokens_per_step"]


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


def _decoding_args(temperature, threshold, factor) -> tuple[float, float | None, float | None]:
    """Checked temperature, threshold (a probability: 0 unmasks a whole block per step, 1 one token
    per row per step) and factor (Fast-dLLM's, > 0)."""
    return (as_number(temperature, "temperature", 0), as_number(threshold, "threshold", 0, 1, optional=True),
            as_number(factor, "factor", 0, low_open=True, optional=True))


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
    mask_id = mask_id_of(model, mask_id)
    prompt = prepare_prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    block_length, num_blocks = windows(gen_length, block_length, steps)
    rule = LLaDARule(temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, steps_per_block=steps // num_blocks)
    return decode(model, rule, prompt, rows=_logits_of_rows, inputs_embeds=inputs_embeds, gen_length=gen_length,
                  steps=steps, num_blocks=num_blocks, window=block_length, declared_block=block_length,
                  threshold=threshold, factor=factor, schedule=schedule, stop_at_eos=stop_at_eos, eos_id=eos_id,
                  trace=trace, mask_id=mask_id, progress=progress)


def _dream_logits(model: nn.Module, inputs: dict, mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """(batch, hi - lo, vocab): the logits that predict tokens lo .. hi-1. Dream's logits are shifted:
    row j predicts token j + 1, and row 0 stands in for token 0 itself (dllm_cache.sampling.dream)."""
    return shifted_logits(_logits_of_rows, model, inputs, mask, lo, hi)


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
    window, num_blocks = windows(gen_length, block_length, steps)
    mask_id = mask_id_of(model, mask_id)
    prompt = prepare_prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    steps_per_block = steps // num_blocks
    rule = DreamRule(alg=alg, alg_temp=alg_temp, temperature=temperature, top_p=top_p, top_k=top_k, eps=eps,
                     steps_per_block=steps_per_block, window=window)
    return decode(model, rule, prompt, rows=_logits_of_rows, inputs_embeds=inputs_embeds, gen_length=gen_length,
                  steps=steps, num_blocks=num_blocks, window=window, declared_block=block_length,
                  threshold=threshold, factor=factor, schedule=schedule, stop_at_eos=stop_at_eos, eos_id=eos_id,
                  trace=trace, mask_id=mask_id, progress=progress)


SAMPLERS = {"llada": llada_generate, "dream": dream_generate, "llada2": llada2_generate}


def generate(
    model: nn.Module, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **options
) -> torch.Tensor:
    """Generate with the sampler of the model's family -> (batch, prompt_len + gen_length).

    The prompt is `input_ids` (batch, P), or `inputs_embeds=` (batch, P, hidden) with input_ids None.
    options: those of `llada_generate` or `dream_generate` (both: gen_length, steps, block_length,
    temperature, threshold, factor, stop_at_eos, eos_id, trace, schedule, mask_id, progress;
    LLaDA: cfg_scale, remasking; Dream: top_p, top_k, alg, alg_temp, eps; block_length on Dream:
    None = its own single window). LLaDA 2.x (llada2_moe): those of `llada2_generate`, the official
    block-diffusion loop (its `steps` count per block; defaults block_length 32, steps 32, threshold 0.95).
    A misspelled option, or one only another family uses, is a ValueError naming the valid ones; None
    (and cfg_scale=0) count as "not set", so code serving several families may pass its defaults.
    """
    family = sampler_of(model)
    return SAMPLERS[family](model, input_ids, attention_mask, **check_options(family, options, SAMPLERS))
