"""Plain reference versions of the two upstream samplers, written from reading the public code.

* `llada_reference`: LLaDA's `generate` (GitHub ML-GSAI/LLaDA, generate.py): semi-autoregressive
  blocks, a block's masks spread evenly over its steps, low-confidence or random remasking,
  classifier-free guidance (conditional and unconditional rows in one batch), Gumbel-max sampling
  in float64 at temperature > 0. One full forward per step, every column scored, top-k per row.
* `dream_reference`: Dream's diffusion generate (`_sample` of the model's generation_utils.py):
  timesteps linspace(1, eps), logits shifted one column right, temperature then top_p then top_k,
  algorithms "origin", "maskgit_plus", "topk_margin", "entropy", and alg_temp.

They are deliberately slow and literal (whole-sequence forwards, Python loops over rows) so they
can serve as an oracle for dllm_cache.sampling.generate, which computes only the current block's rows and
avoids host syncs. Where our samplers differ from upstream on purpose, a flag selects the
behaviour, defaulting to ours:

* `exclude_mask` (DESIGN.md "Fidelity facts"): we set the mask token's logit to -inf before
  sampling and before the confidence softmax, so a step can never "unmask" into [MASK]. Upstream
  does not: its argmax may pick the mask token (the position then stays masked) and the mask
  token's probability mass dilutes every confidence.
* `rng` (not a fidelity fact but a consequence of computing only the current window's logits):
  "ours" draws the sampler's random numbers for the current window's positions only, in our
  order; "upstream" draws them as upstream does (LLaDA: Gumbel noise and remasking noise over the
  whole sequence; Dream: categorical draws over the masked positions only, "origin"'s coin flips
  over the masked positions, alg_temp's draw over whole rows at once). Both sample the same
  distribution; only which random number goes to which position differs, so seeded tokens match
  upstream's only at temperature 0 (and without alg_temp / origin / random remasking).

Our parallel-decoding extensions (threshold, factor, early stop, trace replay) are not
reimplemented: they are ours, not upstream. Dream's `block_length` (Fast-dLLM's semi-AR windows
for Dream) is supported because it is cheap: each window runs Dream's whole schedule over
steps // num_blocks steps; `None` is upstream's single window.

Padding: both references take a left-padded prompt and pass `attention_mask` (batch, P + G) to the
model, as our samplers do. (Upstream Dream builds a 4-D mask and position ids itself; our model
classes derive both from the 2-D mask, so one forward call serves both.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dream_reference", "llada_reference"]

RNG_MODES = ("ours", "upstream")


def _forward(model: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Full logits (batch, seq, vocab) of one ordinary forward."""
    return model(x, attention_mask=attention_mask).logits


def _extend_mask(attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """(batch, P) prompt mask -> (batch, P + G), the response always real; None stays None."""
    if attention_mask is None:
        return None
    return torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], gen_length)], dim=1)


def _check_rng(rng: str) -> None:
    if rng not in RNG_MODES:
        raise ValueError(f"rng must be one of {RNG_MODES}, got {rng!r}.")


# --------------------------------------------------------------------------------------------- LLaDA


def even_counts(masked_per_row: torch.Tensor, steps: int) -> torch.Tensor:
    """Upstream's get_num_transfer_tokens: (batch,) masked counts -> (batch, steps), each row's count
    split evenly, the remainder going one each to the first steps. Written with a row loop on purpose."""
    out = torch.zeros(masked_per_row.shape[0], steps, dtype=torch.long)
    for row, n in enumerate(masked_per_row.tolist()):
        out[row] = n // steps
        out[row, : n % steps] += 1
    return out


def gumbel_max_float64(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Upstream's add_gumbel_noise + argmax: exp(logits) / (-log u) ** T in float64, u ~ U[0, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits64 = logits.to(torch.float64)
    u = torch.rand(logits64.shape, dtype=torch.float64)
    return (logits64.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


@torch.no_grad()
def llada_reference(
    model: nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    exclude_mask: bool = True,
    rng: str = "ours",
) -> torch.Tensor:
    """LLaDA's sampler -> (batch, P + gen_length). prompt: (batch, P), left padded when attention_mask
    (batch, P) marks padding. See the module docstring for `exclude_mask` and `rng`."""
    _check_rng(rng)
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    block_length = block_length or gen_length
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    batch, P = prompt.shape
    x = torch.cat([prompt, torch.full((batch, gen_length), mask_id, dtype=torch.long)], dim=1)  # (batch, L)
    L = x.shape[1]
    mask = _extend_mask(attention_mask, gen_length)
    prompt_index = x != mask_id  # the columns CFG's unconditional branch hides (padding included)

    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        counts = even_counts((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)  # (batch, steps)
        for i in range(steps_per_block):
            mask_index = x == mask_id  # (batch, L)
            if cfg_scale > 0:
                uncond = x.clone()
                uncond[prompt_index] = mask_id
                both = _forward(model, torch.cat([x, uncond]), None if mask is None else torch.cat([mask, mask]))
                cond, un = both.chunk(2)
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = _forward(model, x, mask)  # (batch, L, vocab)
            if exclude_mask:
                logits[..., mask_id] = -math.inf

            x0 = torch.zeros(batch, L, dtype=torch.long)
            if rng == "upstream":
                x0 = gumbel_max_float64(logits, temperature)
            else:  # ours: the noise of the current block's columns only
                x0[:, lo:hi] = gumbel_max_float64(logits[:, lo:hi], temperature)

            if remasking == "low_confidence":
                probs = F.softmax(logits, dim=-1)
                conf = probs.gather(-1, x0[..., None]).squeeze(-1)  # (batch, L)
            elif remasking == "random":
                conf = torch.zeros(batch, L)
                if rng == "upstream":
                    conf = torch.rand(batch, L)
                else:
                    conf[:, lo:hi] = torch.rand(batch, block_length)
            else:
                raise ValueError(f"unknown remasking {remasking!r}")
            conf[:, hi:] = -math.inf  # later blocks wait
            conf = torch.where(mask_index, conf, torch.full_like(conf, -math.inf))
            x0 = torch.where(mask_index, x0, x)
            for row in range(batch):
                k = int(counts[row, i])
                chosen = conf[row].topk(k).indices
                x[row, chosen] = x0[row, chosen]
    return x


# --------------------------------------------------------------------------------------------- Dream


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-probable set whose mass reaches top_p (the first token always)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    mass_before = ordered.softmax(-1).cumsum(-1)
    drop_sorted = torch.zeros_like(mass_before, dtype=torch.bool)
    drop_sorted[..., 1:] = mass_before[..., :-1] > top_p  # a token goes once the mass before it exceeds top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the top_k largest logits (and any tied with the k-th)."""
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def dream_confidence(
    logits: torch.Tensor, alg: str, temperature: float, top_p: float | None, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's sample_tokens for rows of logits (n, vocab) -> (confidence (n,), tokens (n,)).

    Order as upstream: temperature, then top_p, then top_k. The confidence is the chosen token's
    probability ("maskgit_plus"/"origin"), the top-1 minus top-2 probability ("topk_margin") or the
    negative entropy sum p log(p + 1e-10) ("entropy")."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    probs = logits.softmax(-1)
    if temperature > 0:
        # torch.distributions.Categorical(probs).sample(), as upstream; it consumes the same random
        # numbers as torch.multinomial(probs, 1).
        tokens = torch.distributions.Categorical(probs=probs).sample()
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        conf, tokens = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.sort(dim=-1, descending=True).values
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
    return conf, tokens


@torch.no_grad()
def dream_reference(
    model: nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    mask_id: int | None = None,
    exclude_mask: bool = True,
    rng: str = "ours",
) -> torch.Tensor:
    """Dream's diffusion sampler -> (batch, P + gen_length). prompt: (batch, P), left padded when
    attention_mask (batch, P) marks padding. See the module docstring for the flags."""
    _check_rng(rng)
    if alg not in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        raise ValueError(f"unknown alg {alg!r}")
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    window = block_length or gen_length
    assert gen_length % window == 0 and steps % (gen_length // window) == 0
    num_blocks = gen_length // window
    steps_per_block = steps // num_blocks
    batch, P = prompt.shape
    x = torch.cat([prompt, torch.full((batch, gen_length), mask_id, dtype=torch.long)], dim=1)  # (batch, L)
    L = x.shape[1]
    mask = _extend_mask(attention_mask, gen_length)
    timesteps = torch.linspace(1, eps, steps_per_block + 1)

    for b in range(num_blocks):
        lo, hi = P + b * window, P + (b + 1) * window
        in_window = torch.zeros(batch, L, dtype=torch.bool)
        in_window[:, lo:hi] = True
        for i in range(steps_per_block):
            mask_index = (x == mask_id) & in_window  # (batch, L)
            logits = _forward(model, x, mask)
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # column j now predicts token j
            if exclude_mask:
                logits[..., mask_id] = -math.inf
            t, s = timesteps[i], timesteps[i + 1]
            last = i == steps_per_block - 1

            if alg == "origin":
                p_transfer = 1.0 if last else 1 - s / t
                if rng == "upstream":  # coin flips and draws for the masked positions only
                    new = torch.full((int(mask_index.sum()),), mask_id, dtype=torch.long)
                    flips = torch.rand(new.shape) < p_transfer
                    new[flips] = dream_confidence(logits[mask_index][flips], "origin", temperature, top_p, top_k)[1]
                    x[mask_index] = new
                else:  # ours: coin flips for the whole window, then a token drawn for every window position
                    flips = torch.zeros(batch, L, dtype=torch.bool)
                    flips[:, lo:hi] = torch.rand(batch, window) < p_transfer
                    tokens = torch.zeros(batch, L, dtype=torch.long)
                    rows = logits[:, lo:hi].reshape(-1, logits.shape[-1])  # (batch * window, vocab)
                    drawn = dream_confidence(rows, "origin", temperature, top_p, top_k)[1]
                    tokens[:, lo:hi] = drawn.reshape(batch, window)
                    take = flips & mask_index
                    x[take] = tokens[take]
                continue

            candidates = torch.full((batch, L), mask_id, dtype=torch.long)
            full_conf = torch.full((batch, L), -math.inf)
            if rng == "upstream":  # only the masked positions' rows are sampled
                conf, tokens = dream_confidence(logits[mask_index], alg, temperature, top_p, top_k)
                candidates[mask_index], full_conf[mask_index] = tokens, conf
            else:  # ours: every window position is sampled, the unmasked ones then ignored
                conf, tokens = dream_confidence(logits[:, lo:hi].reshape(-1, logits.shape[-1]), alg, temperature, top_p, top_k)
                candidates[:, lo:hi], full_conf[:, lo:hi] = tokens.reshape(batch, window), conf.reshape(batch, window)
                full_conf[~mask_index] = -math.inf
            masked_per_row = mask_index.sum() / batch  # upstream: the batch average (equal rows here)
            k = int(masked_per_row) if last else int(masked_per_row * (1 - s / t))
            if k <= 0:
                continue
            if not alg_temp:
                chosen = full_conf.topk(k, dim=-1).indices  # (batch, k)
            elif rng == "upstream":  # one draw over whole rows at once
                chosen = torch.multinomial(F.softmax(full_conf / alg_temp, dim=-1), k)
            else:  # ours: a draw per row over the window's columns
                chosen = torch.stack([torch.multinomial(F.softmax(full_conf[row, lo:hi] / alg_temp, dim=-1), k) + lo
                                      for row in range(batch)])
            rows = torch.arange(batch)[:, None].expand_as(chosen)
            x[rows, chosen] = candidates[rows, chosen]
    return x
