"""Samplers for masked diffusion LMs: LLaDA (low-confidence / random remasking, semi-AR blocks,
CFG, optional confidence-threshold parallel decoding) and Dream (entropy, maskgit_plus,
topk_margin). They run unchanged with or without the cache, which sees ordinary forwards.

Prompts may be left or right padded; `attention_mask` (batch, prompt_len) marks real tokens.
The samplers run on left padding (right-padded rows are rotated first); the output is
(batch, prompt_len + gen_length) with the prompt exactly as given and the generated tokens after it.
A prompt may come as `inputs_embeds` (batch, prompt_len, hidden) instead of ids (LLaDA-V's image +
text prompt; left padded); the prompt columns of the result are then placeholders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dllm_cache.hooks import sampler_of

from .patch import cache_branch, declared_generation, is_cache_enabled
from .prompt import model_inputs, prompt_tokens
from .sampler_args import DREAM_ALGS, LLADA_REMASKING, as_int, as_number, check_inputs, check_options, to_left_padding


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


def _with_prompt(given_ids: torch.Tensor, used_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x with the caller's prompt as they padded it (the samplers ran on `used_ids`, left padded)."""
    if used_ids is given_ids:
        return x
    return torch.cat([given_ids, x[:, given_ids.shape[1] :]], dim=1)


def _logits_of_rows(model: nn.Module, inputs: dict, mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Logits of rows [lo, hi) -> (batch, hi - lo, vocab); `inputs` is input_ids= or inputs_embeds=.
    A cached model is asked for those rows only (logits_to_keep), so it neither computes nor keeps
    the others."""
    args = (inputs["input_ids"],) if "input_ids" in inputs else ()  # token ids positionally, as callers' hooks expect
    kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    if is_cache_enabled(model):
        return model(*args, **kwargs, attention_mask=mask, logits_to_keep=slice(lo, hi)).logits
    return model(*args, **kwargs, attention_mask=mask).logits[:, lo:hi]


def _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length: int, mask_id: int):
    """(ids the caller gave or placeholders, ids and mask the sampler runs on: left padded)."""
    given_ids = prompt_tokens(input_ids, inputs_embeds, mask_id)
    check_inputs(model, given_ids, attention_mask, gen_length)
    ids, mask = to_left_padding(given_ids, attention_mask)
    if inputs_embeds is not None and ids is not given_ids:
        raise ValueError("generate(): inputs_embeds must be LEFT padded (right-padded embedded prompts are not "
                         "rotated); pad embedded prompts on the left.")
    return given_ids, ids, mask


def tokens_per_step(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Spread each row's masked count (batch,) over `steps` as evenly as possible -> (batch, steps)."""
    base = masked // steps
    extra = masked % steps
    out = base[:, None].expand(-1, steps).clone()
    out += (torch.arange(steps, device=masked.device)[None, :] < extra[:, None]).long()
    return out


def gumbel_argmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Argmax of Gumbel-perturbed logits in float64 (LLaDA's sampling); greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    noise = torch.rand_like(logits).clamp_min(1e-30)
    return (logits.exp() / (-noise.log()) ** temperature).argmax(dim=-1)


def _topk_rows(confidence: torch.Tensor, counts: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Boolean (batch, seq): each row's `counts[row]` highest-confidence positions, no Python loop over rows.

    `kmax` (an upper bound on counts, known on the host) avoids a device->host sync."""
    kmax = int(counts.max()) if kmax is None else min(kmax, confidence.shape[-1])
    picked = torch.zeros_like(confidence, dtype=torch.bool)
    if kmax == 0:
        return picked
    idx = confidence.topk(kmax, dim=-1).indices  # (batch, kmax)
    keep = torch.arange(kmax, device=confidence.device)[None, :] < counts[:, None]
    picked.scatter_(1, idx, keep)
    return picked


@torch.no_grad()
def llada_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    mask_id: int | None = None,
    progress: bool = False,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLaDA sampling -> (batch, prompt_len + gen_length). With `threshold`, every masked token of the
    current block whose confidence exceeds it is unmasked at once (at least one per row per step).
    With `inputs_embeds` (and input_ids None) the prompt columns of the result are placeholders."""
    if remasking not in LLADA_REMASKING:
        raise ValueError(f"remasking must be one of {LLADA_REMASKING}, got {remasking!r}.")
    gen_length, steps = as_int(gen_length, "gen_length"), as_int(steps, "steps")
    block_length = as_int(block_length, "block_length", optional=True)
    mask_id = _mask_id(model, mask_id)
    given_ids, input_ids, attention_mask = _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    temperature, cfg_scale = as_number(temperature, "temperature", 0), as_number(cfg_scale, "cfg_scale", 0)
    # A probability: 0 unmasks the whole block in one step, 1 one token per row per step.
    threshold = as_number(threshold, "threshold", 0, 1, optional=True)
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

    def logits_of(seq: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        logits = _logits_of_rows(model, model_inputs(model, seq, inputs_embeds), full_mask, lo, hi)  # (batch, hi - lo, vocab)
        if cfg_scale > 0:
            uncond = seq.masked_fill(prompt_region, mask_id)
            with cache_branch(model, "uncond"):
                un_logits = _logits_of_rows(model, {"input_ids": uncond}, full_mask, lo, hi)
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        return logits

    with declared_generation(model, P, block_length):
        bar = tqdm(total=steps if threshold is None else None, disable=not progress, desc="llada", leave=False)
        for b in range(num_blocks):
            lo, hi = P + b * block_length, P + (b + 1) * block_length
            schedule = tokens_per_step((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)
            schedule_max = schedule.max(dim=0).values.tolist()  # one host sync per block, not per step
            # Fixed schedule: steps_per_block steps. Threshold mode: until the block is filled,
            # at most block_length steps since each step unmasks at least one token per row.
            budget = steps_per_block if threshold is None else block_length
            for i in range(budget):
                masked = x == mask_id
                if threshold is not None and not bool(masked[:, lo:hi].any()):
                    break
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
                block_masked = masked[:, lo:hi]
                conf = torch.where(block_masked, conf, torch.full_like(conf, -math.inf))
                if threshold is None:
                    picked = _topk_rows(conf, schedule[:, i], schedule_max[i])
                else:
                    picked = (conf > threshold) | _topk_rows(conf, block_masked.any(dim=1).long(), 1)
                x[:, lo:hi] = torch.where(picked & block_masked, x0, block)
                bar.update(1)
        bar.close()
    return _with_prompt(given_ids, input_ids, x)


def _filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits


def _dream_sample(logits: torch.Tensor, alg: str, temperature: float, top_p, top_k) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, tokens) for masked positions' logits (n, vocab)."""
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
    return conf, tokens


@torch.no_grad()
def dream_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 128,
    steps: int = 128,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    mask_id: int | None = None,
    progress: bool = False,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dream sampling -> (batch, prompt_len + gen_length). Dream's logits at i predict token i+1.
    With `inputs_embeds` (and input_ids None) the prompt columns of the result are placeholders."""
    if alg not in DREAM_ALGS:
        raise ValueError(f"alg must be one of {DREAM_ALGS}, got {alg!r}.")
    gen_length, steps = as_int(gen_length, "gen_length"), as_int(steps, "steps")
    mask_id = _mask_id(model, mask_id)
    given_ids, input_ids, attention_mask = _prompt(model, input_ids, inputs_embeds, attention_mask, gen_length, mask_id)
    temperature, eps = as_number(temperature, "temperature", 0), as_number(eps, "eps", 0, 1, low_open=True)
    top_p = as_number(top_p, "top_p", 0, 1, low_open=True, optional=True)
    top_k = as_int(top_k, "top_k", 0, optional=True)
    alg_temp = as_number(alg_temp, "alg_temp", 0, optional=True)
    P = input_ids.shape[1]
    x = _init_sequence(input_ids, gen_length, mask_id)
    full_mask = _full_mask(attention_mask, gen_length)
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    with declared_generation(model, P):
        for i in tqdm(range(steps), disable=not progress, desc="dream", leave=False):
            resp = x[:, P:]  # (batch, gen_length) view: the only region that changes
            masked = resp == mask_id
            if not bool(masked.any()):
                break
            # Dream's logits are shifted: row j predicts token j+1 (row 0 stands in for itself).
            L = x.shape[1]
            inputs = model_inputs(model, x, inputs_embeds)
            if P > 0:
                logits = _logits_of_rows(model, inputs, full_mask, P - 1, L - 1)  # rows P-1 .. L-2
            else:
                logits = _logits_of_rows(model, inputs, full_mask, 0, max(L - 1, 1))
                logits = torch.cat([logits[:, :1], logits[:, : L - 1]], dim=1)
            logits[..., mask_id] = -math.inf
            t, s = timesteps[i], timesteps[i + 1]
            if alg == "origin":
                p_transfer = 1 - s / t if i < steps - 1 else 1.0
                take = masked & (torch.rand(masked.shape, device=x.device) < p_transfer)
                if bool(take.any()):
                    resp[take] = _dream_sample(logits[take], "maskgit_plus", temperature, top_p, top_k)[1]
                continue
            conf, tokens = _dream_sample(logits[masked], alg, temperature, top_p, top_k)
            full_conf = torch.full(masked.shape, -math.inf, device=x.device)
            full_conf[masked] = conf
            proposal = torch.full_like(resp, mask_id)
            proposal[masked] = tokens
            n_masked = masked.sum(dim=1)
            counts = (n_masked.float() * (1 - s / t)).long() if i < steps - 1 else n_masked
            if alg_temp:
                probs = (full_conf / alg_temp).softmax(-1)
                picked = torch.zeros_like(masked)
                for row in range(x.shape[0]):  # multinomial draws differ per row in count
                    k = int(counts[row])
                    if k:
                        picked[row, torch.multinomial(probs[row], k)] = True
            else:
                picked = _topk_rows(full_conf, counts)
            x[:, P:] = torch.where(picked & masked, proposal, resp)
    return _with_prompt(given_ids, input_ids, x)


SAMPLERS = {"llada": llada_generate, "dream": dream_generate}


def generate(
    model: nn.Module, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **options
) -> torch.Tensor:
    """Generate with the sampler of the model's family -> (batch, prompt_len + gen_length).

    The prompt is `input_ids` (batch, P), or `inputs_embeds=` (batch, P, hidden) with input_ids None.

    options: those of `llada_generate` (gen_length, steps, block_length, temperature, cfg_scale,
    remasking, threshold, mask_id, progress) or `dream_generate` (gen_length, steps, temperature,
    top_p, top_k, alg, alg_temp, eps, mask_id, progress). A misspelled option, or one only the
    other family uses, is a ValueError naming the valid ones; None (and cfg_scale=0) count as
    "not set", so code serving both families may pass its defaults.
    """
    family = sampler_of(model)
    return SAMPLERS[family](model, input_ids, attention_mask, **check_options(family, options, SAMPLERS))
