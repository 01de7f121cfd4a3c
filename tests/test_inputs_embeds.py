"""Prompts given as embeddings (LLaDA-V: image features spliced into the prompt) are cached like any prompt."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dllm_cache import CacheConfig, cache_enabled, cache_stats, disable_cache, enable_cache, reset_cache
from dllm_cache.hooks import family_of
from dllm_cache.models import LLaDAConfig, LLaDAModelLM
from dllm_cache.models.tiny import _seeded, tiny_llada_config
from dllm_cache.sampling.generate import generate
from tests.helpers import logits_along, max_err, trajectory

ATOL_FP32 = 1e-5
REFRESH_EVERY_STEP = CacheConfig(prompt_interval=1, response_interval=1)


def _embedded(model, seqs):
    emb = model.get_input_embeddings()
    return [emb(s).detach() for s in seqs]


def _embeds_logits(model, embeds, mask):
    return [model(inputs_embeds=e, attention_mask=mask).logits for e in embeds]


def test_inputs_embeds_equal_input_ids_uncached(model):
    seqs, mask = trajectory(model, steps=1)
    ids_logits = model(seqs[0], attention_mask=mask).logits
    assert torch.equal(model(inputs_embeds=_embedded(model, seqs)[0], attention_mask=mask).logits, ids_logits)


def test_cached_inputs_embeds_reproduce_uncached(model):
    """Refresh every step, padded rows of different prompt lengths: exact (a declared prompt length
    here; test_default_schedule_same_with_embeds_as_with_ids checks the detected one)."""
    seqs, mask = trajectory(model, batch=3, padded=True, steps=4)
    embeds = _embedded(model, seqs)
    ref = logits_along(model, seqs, mask)
    with cache_enabled(model, REFRESH_EVERY_STEP):
        reset_cache(model, prompt_length=10)
        out = _embeds_logits(model, embeds, mask)
        stats = cache_stats(model)
    assert max_err(out, ref) <= ATOL_FP32
    assert stats["generations"] == 1 and stats["steps"] == len(seqs)


def test_default_schedule_same_with_embeds_as_with_ids(model):
    """The same sequence as ids or as their embeddings takes the same cached path, step for step.
    Embeddings carry no token ids to find the decoding frontier, so the default ("frontier")
    selection ranks by V-verify alone there: the ids' path under selection="paper"."""
    seqs, mask = trajectory(model, batch=2, steps=5)
    with cache_enabled(model, CacheConfig(selection="paper")):
        by_ids = logits_along(model, seqs, mask)
        ids_stats = cache_stats(model)
    for config in (CacheConfig(selection="paper"), CacheConfig()):
        with cache_enabled(model, config):
            by_embeds = _embeds_logits(model, _embedded(model, seqs), mask)
            embeds_stats = cache_stats(model)
        assert max_err(by_embeds, by_ids) <= ATOL_FP32
        assert embeds_stats == ids_stats and embeds_stats["partial_steps"] > 0


def test_changed_prompt_embeddings_start_a_new_generation(model):
    """A new image with the same shape changes only prompt rows: detected, nothing stale reused."""
    seqs, mask = trajectory(model, batch=2, steps=3)
    embeds = _embedded(model, seqs)
    other = [e.clone() for e in embeds]
    for e in other:
        e[:, 4:7] += 0.5  # "image features" inside the prompt
    ref = _embeds_logits(model, other, mask)
    with cache_enabled(model, CacheConfig()):
        _embeds_logits(model, embeds, mask)
        out = model(inputs_embeds=other[0], attention_mask=mask).logits
        assert cache_stats(model)["generations"] == 2
    assert max_err([out], [ref[0]]) <= ATOL_FP32


# --------------------------------------------------------------------------- LLaDA-V stand-in
PATCH_DIM, VISION_DIM, N_PATCHES = 12, 16, 5
IMAGE_TOKEN = 7  # placeholder id marking where the image's patch features go


class TinyLLaDAV(LLaDAModelLM):
    """LLaDA-V's layout (LLaVA-style): the LLaDA language model with `model.vision_tower` and
    `model.mm_projector` beside `model.transformer`. The vision tower is a stand-in (one linear patch
    encoder instead of SigLIP); the projector is LLaVA's two-layer GELU MLP."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        d = config.d_model
        self.model.vision_tower = nn.Linear(PATCH_DIM, VISION_DIM)
        self.model.mm_projector = nn.Sequential(nn.Linear(VISION_DIM, d), nn.GELU(), nn.Linear(d, d))

    def prompt_embeds(self, input_ids: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """input_ids (batch, P) with N_PATCHES image placeholders per row, patches (batch, N_PATCHES,
        PATCH_DIM) -> prompt embeddings (batch, P, d_model) with the projected image features in place."""
        embeds = self.get_input_embeddings()(input_ids)
        features = self.model.mm_projector(self.model.vision_tower(patches))
        slots = input_ids == IMAGE_TOKEN
        return embeds.masked_scatter(slots[..., None], features[slots.any(-1)].reshape(-1, embeds.shape[-1]))


def _tiny_llada_v(seed: int = 0) -> TinyLLaDAV:
    return _seeded(TinyLLaDAV, tiny_llada_config(), seed, 0.15)


def _image_prompt(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (batch, 12), generator=g)
    ids[:, 2 : 2 + N_PATCHES] = IMAGE_TOKEN
    return ids, torch.randn(batch, N_PATCHES, PATCH_DIM, generator=g)


def test_llada_v_generation_cached_like_any_prompt():
    model = _tiny_llada_v()
    assert family_of(model) == "llada"
    ids, patches = _image_prompt()
    with torch.no_grad():
        prompt = model.prompt_embeds(ids, patches)  # (2, 12, 64): text + image features
    kw = dict(gen_length=16, steps=16, block_length=8)
    plain = generate(model, inputs_embeds=prompt, **kw)
    with cache_enabled(model, REFRESH_EVERY_STEP):
        exact = generate(model, inputs_embeds=prompt, **kw)
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    enable_cache(model, CacheConfig(prompt_interval=100, response_interval=4))
    cached = generate(model, inputs_embeds=prompt, **kw)
    stats = cache_stats(model)
    disable_cache(model)
    assert torch.equal(exact, plain)
    assert stats["generations"] == 1 and stats["partial_steps"] > 0
    assert not (cached[:, 12:] == model.config.mask_token_id).any()
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards
    assert torch.equal(generate(model, inputs_embeds=prompt, **kw), plain)
    # The image matters: other patches, other prompt rows, other logits on the first step.
    with torch.no_grad():
        other = model.prompt_embeds(ids, patches + 1.0)
    assert not torch.equal(other[:, 2:7], prompt[:, 2:7]) and torch.equal(other[:, 7:], prompt[:, 7:])


def test_llada_v_checkpoint_language_model_loads(tmp_path):
    """A LLaDA-V-shaped checkpoint (model_type llava_llada; LLaDA names under model.transformer, plus
    model.vision_tower / model.mm_projector) gives its language model to LLaDAModelLM, vision weights left out."""
    source = _tiny_llada_v(seed=3)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = {**source.config.to_dict(), "model_type": "llava_llada", "architectures": ["LlavaLLaDAModelLM"],
              "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": VISION_DIM, "mm_vision_tower": "stand-in"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, info = LLaDAModelLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert info["unexpected_keys"] and all(k.startswith(("model.vision_tower.", "model.mm_projector."))
                                           for k in info["unexpected_keys"])
    ids = torch.randint(10, 200, (1, 9))
    assert torch.equal(model.eval()(ids).logits, source(ids).logits)


def test_inputs_embeds_shape_errors(model):
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, seq, 64\)"):
        model(inputs_embeds=torch.zeros(1, 4, 63))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), inputs_embeds=torch.zeros(1, 3, 64), gen_length=4, steps=4)


def test_cache_leaves_the_callers_embeddings_untouched(model):
    """Cached steps update the first layer's response rows in place: never the caller's tensor."""
    seqs, mask = trajectory(model, batch=2, steps=4)
    embeds = _embedded(model, seqs)
    kept = [e.clone() for e in embeds]
    with cache_enabled(model, CacheConfig()):
        _embeds_logits(model, embeds, mask)
        assert cache_stats(model)["partial_steps"] == 3
    assert all(torch.equal(e, k) for e, k in zip(embeds, kept))
