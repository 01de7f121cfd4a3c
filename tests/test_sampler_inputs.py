"""generate() on odd input: either padding side gives the same answer; misspelled, wrong-family
and out-of-range options and malformed batches are clear errors, never silently ignored."""

import numpy as np
import pytest
import torch

from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.options import to_left_padding
from tests.helpers import padded_prompts as prompts
from tests.helpers import right_padded


def _block(family: str) -> dict:
    return {"block_length": 4} if family == "llada" else {}


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_right_padding_gives_the_left_padded_answer(model, family, cached):
    ids, mask = prompts(model)  # rows padded by 0, 2, 4 tokens
    rids, rmask = right_padded(ids, mask)
    assert not torch.equal(rids, ids)
    kw = dict(gen_length=8, steps=8, **_block(family))
    with cache_enabled(model, CacheConfig(1, 1, 0.25)) if cached else torch.no_grad():
        left = generate(model, ids, mask, **kw)
        right = generate(model, rids, rmask, **kw)
    assert torch.equal(right[:, :10], rids)  # prompt returned as given
    assert torch.equal(right[:, 10:], left[:, 10:])
    assert not (right[:, 10:] == model.config.mask_token_id).any()


def test_mixed_padding_rows_are_rotated_one_by_one():
    ids = torch.tensor([[7, 8, 0, 0], [0, 5, 6, 9], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    left_ids, left_mask = to_left_padding(ids, mask)
    assert left_ids.tolist() == [[0, 0, 7, 8], [0, 5, 6, 9], [1, 2, 3, 4]]
    assert left_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
    already_left = ids[1:]
    assert to_left_padding(already_left, mask[1:])[0] is already_left  # nothing to rotate: no copy


def test_mask_with_a_hole_is_an_error(model):
    ids, mask = prompts(model)
    mask[2, 6] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[2\] are neither left- nor right-padded"):
        generate(model, ids, mask, gen_length=8, steps=8)


@pytest.mark.parametrize(
    "family_name,options,match",
    [
        ("llada", {"gen_lenght": 8}, "unknown option 'gen_lenght'. Did you mean 'gen_length'"),
        ("llada", {"top_p": 0.9}, "top_p=0.9 is an option of the dream sampler"),
        ("llada", {"alg": "entropy"}, "alg='entropy' is an option of the dream sampler"),
        ("llada", {"remasking": "bogus"}, r"remasking must be one of \('low_confidence', 'random'\)"),
        ("dream", {"cfg_scale": 1.5}, "cfg_scale=1.5 is an option of the llada sampler"),
        ("dream", {"remasking": "random"}, "remasking='random' is an option of the llada sampler"),
        ("llada", {"threshold": 1.5}, r"threshold must be a number in \[0, 1\]"),
        ("dream", {"factor": 0}, r"factor must be a number in \(0, inf\)"),
        ("dream", {"alg": "bogus"}, "alg must be one of"),
        ("dream", {"stepz": 4}, "Did you mean 'steps'"),
    ],
)
def test_unknown_and_wrong_family_options(family_name, options, match):
    from tests.conftest import FACTORIES

    model = FACTORIES[family_name]()
    ids, mask = prompts(model)
    with pytest.raises(ValueError, match=match) as err:
        generate(model, ids, mask, gen_length=8, steps=8, **options)
    assert any(s in str(err.value) for s in ("sampler takes: gen_length, steps", "must be one of", "must be a number"))


def test_unset_options_of_the_other_family_pass(model, family):
    """Code serving both families passes its defaults: None, and cfg_scale 0."""
    ids, mask = prompts(model)
    generic = dict(block_length=None, cfg_scale=0.0, threshold=None, remasking=None, alg=None, top_p=None, top_k=None)
    out = generate(model, ids, mask, gen_length=4, steps=4, **generic)
    assert torch.equal(out, generate(model, ids, mask, gen_length=4, steps=4))


def _inputs(model):
    ids, mask = prompts(model)
    return dict(input_ids=ids, attention_mask=mask, gen_length=8, steps=8)


BAD = [
    (dict(gen_length=0), ValueError, "gen_length must be an integer >= 1"),
    (dict(gen_length=-3), ValueError, "gen_length must be an integer >= 1"),
    (dict(steps=0), ValueError, "steps must be an integer >= 1"),
    (dict(gen_length=2.5), ValueError, "gen_length must be an integer"),
    (dict(input_ids=torch.arange(5), attention_mask=None), ValueError, r"must be 2-D .*input_ids\[None\]"),
    (dict(input_ids=torch.zeros(0, 4, dtype=torch.long), attention_mask=None), ValueError, "batch is empty"),
    (dict(input_ids=torch.rand(3, 10), attention_mask=None), TypeError, "integer token ids"),
    (dict(input_ids=torch.full((3, 10), 10_000), attention_mask=None), ValueError, r"outside the model's \[0, 255\]"),
    (dict(attention_mask=torch.ones(3, 7, dtype=torch.long)), ValueError, r"shape of input_ids \(3, 10\)"),
    (dict(attention_mask=torch.full((3, 10), 2)), ValueError, "only 0 .* and 1"),
    (dict(temperature=-1.0), ValueError, r"temperature must be a number in \[0, inf\)"),
    (dict(gen_length=600, steps=600), ValueError, "exceeds the model's maximum sequence length 512"),
]


@pytest.mark.parametrize("overrides,kind,match", BAD)
def test_bad_inputs_are_clear_errors(model, family, overrides, kind, match):
    kw = {**_inputs(model), **overrides}
    with pytest.raises(kind, match=match):
        generate(model, **kw)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(threshold=-0.1), r"threshold must be a number in \[0, 1\]"),
        (dict(threshold=1.5), r"threshold must be a number in \[0, 1\]"),
        (dict(cfg_scale=-0.5), r"cfg_scale must be a number in \[0, inf\)"),
        (dict(block_length=0), "block_length must be an integer >= 1"),
    ],
)
def test_bad_llada_options(options, match):
    from dllm_cache.models.tiny import tiny_llada

    model = tiny_llada()
    with pytest.raises(ValueError, match=match):
        generate(model, **_inputs(model), **options)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(eps=0.0), r"eps must be a number in \(0, 1\]"),
    ],
)
def test_bad_dream_options(options, match):
    from dllm_cache.models.tiny import tiny_dream

    model = tiny_dream()
    with pytest.raises(ValueError, match=match):
        generate(model, **_inputs(model), **options)


def test_numpy_integers_are_accepted(model, family):
    ids, mask = prompts(model)
    out = generate(model, ids, mask, gen_length=np.int64(4), steps=np.int32(4))
    assert torch.equal(out, generate(model, ids, mask, gen_length=4, steps=4))
