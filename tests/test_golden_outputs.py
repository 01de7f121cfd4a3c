"""Golden outputs: greedy generations of the two shipped models, pinned as token ids.

The shipped LLaDA (eval/tiny/model) and Dream (eval/tiny/dream_model) models answer the first three
held-out arithmetic problems (eval/data/arith_synth/test.jsonl, prompt "Question: ...\\nAnswer:"),
as one left-padded batch, greedy, short (gen 32, 16 steps; LLaDA in blocks of 8, Dream in its own
single window with alg "entropy"), uncached and with the default CacheConfig(). The ids are in
tests/golden/shipped_greedy.json, written by the code under test on CPU in fp32:

    python -m tests.test_golden_outputs --regen        # from the repository root

Regenerate only for a deliberate change of the samplers, the models or the cache defaults, and say
why in the commit: the uncached ids are also checked against the plain reference samplers
(tests/reference_samplers.py), so a regeneration cannot silently pin a sampler bug; the cached
ids pin the approximate path, which no reference defines. Greedy decoding on fp32 CPU kernels is
deterministic here; a different BLAS could flip a near-tie, which the test's message would show
as a single differing token.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.sampling.generate import generate
from dllm_cache.shipped import arith_prompt, default_prompts_file, ready_model_dir
from tests.helpers import torch_threads
from tests.reference_samplers import dream_reference, llada_reference

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "shipped_greedy.json"
MODELS = {"llada": REPO / "eval" / "tiny" / "model", "dream": REPO / "eval" / "tiny" / "dream_model"}
SETTINGS = {
    "llada": dict(gen_length=32, steps=16, block_length=8),
    "dream": dict(gen_length=32, steps=16, alg="entropy"),
}
REFERENCE = {"llada": llada_reference, "dream": dream_reference}
N_PROMPTS = 3


@cache
def _load(name: str):
    model = AutoModel.from_pretrained(ready_model_dir(MODELS[name]), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ready_model_dir(MODELS[name]))
    return model, tok


def _prompts(tok) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(questions, left-padded ids (N, P), attention mask (N, P)) of the first held-out problems."""
    lines = default_prompts_file().read_text().splitlines()[:N_PROMPTS]  # the held-out file eval/tiny/tasks.py reads
    questions = [json.loads(line)["question"] for line in lines]
    rows = [tok(arith_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return questions, ids, mask


def _responses(name: str, cached: bool) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    model, tok = _load(name)
    _, ids, mask = _prompts(tok)
    if cached:
        with cache_enabled(model, CacheConfig()):
            out = generate(model, ids, mask, **SETTINGS[name])
    else:
        out = generate(model, ids, mask, **SETTINGS[name])
    return out[:, ids.shape[1]:].tolist(), ids, mask


def regenerate() -> dict:
    """Write tests/golden/shipped_greedy.json from the current code; returns what was written."""
    data: dict = {"about": "python -m tests.test_golden_outputs --regen; see tests/test_golden_outputs.py", "models": {}}
    for name in sorted(MODELS):
        _, tok = _load(name)
        questions, _, _ = _prompts(tok)
        uncached = _responses(name, cached=False)[0]
        cached = _responses(name, cached=True)[0]
        data["models"][name] = {
            "settings": SETTINGS[name],
            "questions": questions,
            "uncached": uncached,
            "default_cache": cached,
            "uncached_text": tok.batch_decode(uncached, skip_special_tokens=True),  # for readers only
            "default_cache_text": tok.batch_decode(cached, skip_special_tokens=True),
        }
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    return data


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())["models"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: small tensors, and a busy 2-core machine makes two threads wait on each other."""
    with torch_threads(1):
        yield


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_file_matches_its_settings(golden, name):
    _, tok = _load(name)
    entry = golden[name]
    assert entry["settings"] == SETTINGS[name] and entry["questions"] == _prompts(tok)[0]


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "default_cache"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_greedy_output_is_pinned(golden, name, cached):
    got = _responses(name, cached)[0]
    want = golden[name]["default_cache" if cached else "uncached"]
    diff = [(r, c) for r in range(len(want)) for c in range(len(want[r])) if got[r][c] != want[r][c]]
    assert not diff, f"{name} {'cached' if cached else 'uncached'}: {len(diff)} tokens differ (row, col) {diff[:8]}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pinned_uncached_output_is_the_reference_samplers(golden, name):
    """The pinned ids are what upstream's algorithm gives on the trained weights, not just ours."""
    model, tok = _load(name)
    _, ids, mask = _prompts(tok)
    ref = REFERENCE[name](model, ids, mask, **SETTINGS[name])
    assert ref[:, ids.shape[1]:].tolist() == golden[name]["uncached"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python -m tests.test_golden_outputs --regen  (rewrites tests/golden/shipped_greedy.json)")
    torch.set_num_threads(1)
    for name, entry in regenerate()["models"].items():
        print(name, "uncached:", entry["uncached_text"])
        print(name, "default cache:", entry["default_cache_text"])
