"""What the samplers accept: option names per family, input shapes and dtypes, padding side.

Checked once per generate() call (one host sync), so a misspelled option, an option the model's
family does not use, or a malformed batch is a clear error instead of a silently wrong answer.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import warnings
from collections.abc import Callable

import torch
from torch import nn

LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGS = ("entropy", "maskgit_plus", "topk_margin", "origin")
_CHOICES = {"remasking": LLADA_REMASKING, "alg": DREAM_ALGS}

# An option of the other family is accepted only unset (None) or "off", so code serving both
# families (lm-eval) may pass its defaults; any other value would be silently ignored.
_OFF: dict[str, tuple] = {"cfg_scale": (0,)}


def option_names(sampler: Callable) -> tuple[str, ...]:
    """The keyword-only options of a sampler function, in signature order."""
    params = inspect.signature(sampler).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(family: str, options: dict, samplers: dict[str, Callable]) -> dict:
    """`options` without unset ones (None means the sampler's default; other families' "off"
    values are dropped); ValueError naming the valid ones for an unknown option, one that only
    another family uses, or a choice not on its list."""
    valid = option_names(samplers[family])
    others: dict[str, str] = {}  # option -> the first other family that takes it (LLaDA's, Dream's, then LLaDA 2.x's)
    for fam, fn in samplers.items():
        if fam != family:
            for name in option_names(fn):
                others.setdefault(name, fam)
    kept = {}
    for name, value in options.items():
        if value is None and (name in valid or name in others):
            continue
        if name in valid:
            if name in _CHOICES and value not in _CHOICES[name]:
                raise ValueError(f"generate(): {name} must be one of {_CHOICES[name]}, got {value!r}.")
            kept[name] = value
            continue
        listing = f"The {family} sampler takes: {', '.join(valid)}."
        if name in others:
            if value in _OFF.get(name, ()):
                continue  # "off": nothing is ignored
            raise ValueError(
                f"generate(): {name}={value!r} is an option of the {others[name]} sampler; a {family} model "
                f"does not use it (it would be ignored). {listing}"
            )
        close = difflib.get_close_matches(name, [*valid, *others], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"generate(): unknown option {name!r}.{hint} {listing}")
    return kept


def as_int(value, name: str, minimum: int = 1, *, optional: bool = False) -> int | None:
    """A Python int >= minimum from any integer type (numpy's too); None passes when optional."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        none = " or None" if optional else ""
        raise ValueError(f"generate(): {name} must be an integer >= {minimum}{none}, got {value!r}.")
    return int(value)


def as_number(value, name: str, low: float, high: float | None = None, *, low_open: bool = False,
              optional: bool = False) -> float | None:
    """A Python float in [low, high] (or (low, high] with low_open); None passes when optional."""
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, " + (f"{high}]" if high is not None else "inf)")
        raise ValueError(f"generate(): {name} must be a number in {bound}, got {value!r}.")
    return float(value)


def position_limit(config) -> int | None:
    """The most positions a model takes (LLaDA: max_sequence_length, Dream: max_position_embeddings);
    None if its config names neither."""
    return getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)


def check_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, gen_length: int,
                 mask_id: int | None = None, inputs_embeds: torch.Tensor | None = None) -> None:
    """Shapes, dtypes, devices, token range and total length of one generate() call; and the inputs that
    would otherwise give junk silently: a row with no real token, a prompt holding the mask token (the
    sampler never decodes prompt columns, so it would stay masked), non-finite prompt embeddings."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"generate(): input_ids must be a torch.Tensor (batch, prompt_len), got {type(input_ids).__name__}.")
    if input_ids.dim() != 2:
        hint = " For one prompt, pass input_ids[None] (batch of 1)." if input_ids.dim() == 1 else ""
        raise ValueError(f"generate(): input_ids must be 2-D (batch, prompt_len), got shape {tuple(input_ids.shape)}.{hint}")
    if input_ids.shape[0] == 0:
        raise ValueError("generate(): the batch is empty (input_ids has 0 rows); pass at least one prompt.")
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise TypeError(
            f"generate(): input_ids must hold integer token ids (torch.long), got {input_ids.dtype}. "
            "Use the tokenizer's ids, e.g. tok(text, return_tensors='pt')['input_ids']."
        )
    param = next(model.parameters(), None)
    if param is not None and param.device != input_ids.device:
        raise ValueError(
            f"generate(): input_ids are on {input_ids.device} but the model is on {param.device}; "
            f"move them with input_ids.to({str(param.device)!r})."
        )
    try:
        n_tokens = getattr(model.get_input_embeddings(), "num_embeddings", None)
    except (AttributeError, NotImplementedError):  # a model without the accessor: skip the range check
        n_tokens = None
    limit = position_limit(model.config)
    total = input_ids.shape[1] + gen_length
    if limit and total > limit:
        raise ValueError(
            f"generate(): prompt ({input_ids.shape[1]}) + gen_length ({gen_length}) = {total} tokens exceeds the model's "
            f"maximum sequence length {limit}; shorten the prompt (keep its last tokens) or lower gen_length."
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(
                f"generate(): attention_mask must have the shape of input_ids {tuple(input_ids.shape)} "
                f"(1 = real token, 0 = padding), got {got}."
            )
        if attention_mask.device != input_ids.device:
            raise ValueError(f"generate(): attention_mask is on {attention_mask.device} but input_ids are on {input_ids.device}.")
    _check_values(input_ids, attention_mask, n_tokens, None if inputs_embeds is not None else mask_id, inputs_embeds)


def _check_values(ids: torch.Tensor, mask: torch.Tensor | None, n_tokens: int | None, mask_id: int | None,
                  embeds: torch.Tensor | None) -> None:
    """The checks that read tensor values, in one host sync: every figure is reduced on the device and read
    back together; the rows to name in an error are found only once something is wrong."""
    if not ids.numel():
        return
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask == 1
    masked_prompt = (ids == mask_id) & real if mask_id is not None else torch.zeros_like(real)
    no = torch.zeros((), dtype=torch.bool, device=ids.device)
    flags = (
        no if mask is None else ((mask != 0) & (mask != 1)).any(),  # a mask value other than 0 / 1
        (~real.any(dim=1)).any(),  # a row of padding alone
        masked_prompt.any(),  # the mask token among the real prompt tokens
        no if embeds is None else ~torch.isfinite(embeds).all(),  # NaN / inf prompt embeddings
    )
    figures = torch.stack([ids.min(), ids.max(), *(f.to(ids.dtype) for f in flags)])
    lo, hi, not_binary, empty_row, has_mask, non_finite = figures.tolist()  # the one host sync
    if n_tokens is not None and (lo < 0 or hi >= n_tokens):
        raise ValueError(f"generate(): input_ids hold ids in [{lo}, {hi}], outside the model's [0, {n_tokens - 1}].")
    if not_binary:
        raise ValueError("generate(): attention_mask must hold only 0 (padding) and 1 (real token).")
    if empty_row:
        rows = (~real.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"generate(): attention_mask row(s) {rows} mark no real token: a prompt of padding alone has nothing to "
            "condition on. Drop those rows, or give each at least one real token."
        )
    if has_mask:
        rows = masked_prompt.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"generate(): the prompt of row(s) {rows} holds the mask token id {mask_id}. generate() fills only the "
            "gen_length new positions, so a masked prompt position would stay masked and blur what the model "
            "conditions on. Remove it from the prompt (or mark it as padding with attention_mask=0)."
        )
    if non_finite:
        raise ValueError("generate(): inputs_embeds hold NaN or inf values; every prompt embedding must be finite "
                         "(padding positions too: fill them with zeros).")


def fit_steps(steps: int, gen_length: int) -> int:
    """steps, or gen_length when more steps are asked than there are tokens: every step unmasks at least one
    token per row, so the extra forwards would find nothing left to decode. Warns when it lowers them."""
    if steps <= gen_length:
        return steps
    warnings.warn(
        f"generate(): steps ({steps}) > gen_length ({gen_length}): each step unmasks at least one token, so the last "
        f"{steps - gen_length} forwards would decode nothing; using steps={gen_length}.",
        stacklevel=3,
    )
    return gen_length


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samplers need LEFT padding (the response follows the prompt's last real token).
    Right-padded rows (batch, P) are rotated so their real tokens end the row; mixed batches
    are fine. A row whose real tokens are not contiguous at one end is a ValueError."""
    if attention_mask is None:
        return input_ids, None
    real = attention_mask.bool()
    P = real.shape[1]
    n = real.sum(dim=1, keepdim=True)  # (batch, 1) real tokens per row
    cols = torch.arange(P, device=real.device)[None, :]
    left = (real == (cols >= P - n)).all(dim=1)
    right = (real == (cols < n)).all(dim=1)
    if bool(left.all()):
        return input_ids, attention_mask
    bad = (~(left | right)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"generate(): attention_mask row(s) {bad} are neither left- nor right-padded: each row's 1s must be one "
            "contiguous run at the start (right padding) or the end (left padding) of the row."
        )
    shift = torch.where(left, 0, P - n.squeeze(1))  # (batch,) right-padded rows move right by their pad count
    src = (cols - shift[:, None]) % P  # new[j] = old[j - shift]
    return input_ids.gather(1, src), attention_mask.gather(1, src)
