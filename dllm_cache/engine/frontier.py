"""The "frontier" selection: which response tokens a partial step must recompute first.

In semi-autoregressive decoding only the current block is sampled; its still-masked tokens must
see the tokens decoded a step ago, and tokens unmasked since the last response refresh carry
stale features at every layer. The paper's V-verify ranks all response tokens by Value drift and
spends much of its budget on future blocks' masks and long-finished tokens (on a 14.6M model,
45% of it outside the current block, and 24 points of accuracy lost). This marks the tokens
being decoded (the window) and the newly unmasked ones; `select.select_drifted` takes them
first, by drift, and spends what is left of the budget by V-verify.

Everything here is tensor arithmetic on the step's input ids (no host sync), so it runs inside
captured CUDA graphs and is recomputed on every replay.
"""

from __future__ import annotations

import torch


def decoding_window(tokens: torch.Tensor, mask_id: int, window: int, block_aligned: bool) -> torch.Tensor:
    """(batch, R) bool: the tokens being decoded now.

    tokens: (batch, R) response token ids. The window starts at the semi-AR block holding the first
    masked token (`block_aligned`, blocks of `window` tokens, as LLaDA's sampler fills them in
    order) or at the first masked token itself (no blocks: Dream), and is `window` tokens long.
    Rows with nothing masked get an empty window.
    """
    R = tokens.shape[1]
    masked = tokens == mask_id
    if R == 0:  # nothing generated (a forward on the prompt alone): an empty window
        return masked
    first = torch.where(masked.any(dim=1), masked.int().argmax(dim=1), torch.full_like(masked[:, 0], R, dtype=torch.long))
    lo = torch.div(first, window, rounding_mode="floor") * window if block_aligned else first
    pos = torch.arange(R, device=tokens.device)
    return (pos >= lo[:, None]) & (pos < (lo + window)[:, None]) & (first < R)[:, None]


def frontier_priority(
    tokens: torch.Tensor,
    refresh_tokens: torch.Tensor | None,
    mask_id: int,
    window: int,
    block_aligned: bool,
    row_offset: int,
    logit_shift: int,
) -> torch.Tensor:
    """(batch, R_cache) priority over the cache's response rows: 2 first, then 1, then 0.

    tokens: (batch, R) the generated region's ids; refresh_tokens: the same at the last response
    refresh (None: nothing unmasked since). The cache's response rows start `row_offset` (0 or 1)
    rows before the first generated token. Priority 2: the window's tokens and the rows whose
    logits predict them (row - `logit_shift` on shifted models such as Dream); 1: tokens unmasked
    since the last refresh (outside the window).
    """
    win = decoding_window(tokens, mask_id, window, block_aligned)
    batch, R = tokens.shape
    rows = torch.zeros(batch, R + row_offset, dtype=torch.int8, device=tokens.device)
    if refresh_tokens is not None:
        rows[:, row_offset:] = (tokens != refresh_tokens).to(torch.int8)
    rows[:, row_offset:].masked_fill_(win, 2)
    d = row_offset - logit_shift  # cache row of the row that predicts token j is j + d
    if logit_shift:
        if d >= 0:
            rows[:, d : d + R].masked_fill_(win, 2)
        else:
            rows[:, : R + d].masked_fill_(win[:, -d:], 2)
    return rows
