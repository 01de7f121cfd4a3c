"""A prompt given as token ids, or as embeddings (a multimodal prompt: LLaDA-V splices image features
into its prompt embeddings). The samplers keep a token sequence either way; with embeddings, its prompt
columns hold placeholders and every forward gets the prompt embeddings followed by the embedded response.
"""

from __future__ import annotations

import torch
from torch import nn


def prompt_tokens(
    input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, mask_id: int
) -> torch.Tensor:
    """(batch, P) token ids of the prompt: the ids, or non-mask placeholders for embedded prompts."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(
            "Give the prompt as exactly one of input_ids (batch, prompt_len) or inputs_embeds "
            "(batch, prompt_len, hidden)."
        )
    if input_ids is not None:
        return input_ids
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be (batch, prompt_len, hidden), got shape {tuple(inputs_embeds.shape)}.")
    batch, prompt_len = inputs_embeds.shape[:2]
    placeholder = 0 if mask_id != 0 else 1  # never read by the model: those rows come from inputs_embeds
    return torch.full((batch, prompt_len), placeholder, dtype=torch.long, device=inputs_embeds.device)


def model_inputs(model: nn.Module, x: torch.Tensor, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Keyword input of one forward over the sequence x (batch, P + gen): input_ids=x, or
    inputs_embeds = prompt embeddings (batch, P, hidden) followed by the response tokens' embeddings."""
    if inputs_embeds is None:
        return {"input_ids": x}
    prompt_len = inputs_embeds.shape[1]
    response = model.get_input_embeddings()(x[:, prompt_len:])  # (batch, gen, hidden)
    return {"inputs_embeds": torch.cat([inputs_embeds, response.to(inputs_embeds.dtype)], dim=1)}
