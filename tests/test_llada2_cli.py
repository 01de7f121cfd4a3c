"""`dllm-cache generate` and `dllm-cache serve` on a LLaDA 2.x (llada2_moe) model folder, as a user meets them:
a tiny random model saved with save_pretrained next to a tokenizer, fp32 on CPU.

generate runs the block-diffusion sampler with the CLI's block length and its steps spread over the blocks, and
prints FLOPs that are what the two runs computed (counted here with FlopCounterMode); serve answers a request
with the text the library's generate gives for the same settings (its steps per block), cached and not.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dllm_cache
from dllm_cache import CacheConfig, cli, shipped
from dllm_cache.analysis import flops
from dllm_cache.models.tiny import tiny_llada2
from tests.helpers import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


def test_generate_on_a_llada2_folder(tmp_path, monkeypatch, capsys):
    tok = byte_tokenizer()
    tiny_llada2(seed=0, vocab_size=260, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    measured, costed = [], []

    def timed(fn, device):  # the CLI's timer, also counting what the timed generation computes
        with FlopCounterMode(display=False, custom_mapping=flops._extra_flop_formulas()) as counter:
            out = fn()
        measured.append(int(counter.get_total_flops()))
        return out, 1.0

    def cost(*args, **kwargs):
        result = real_cost(*args, **kwargs)
        costed.append(result.flops)
        return result

    real_cost = flops.generation_cost
    monkeypatch.setattr(cli, "_timed", timed)
    monkeypatch.setattr(flops, "generation_cost", cost)
    assert cli.main(["generate", "--model", str(tmp_path), "--batch-size", "2", "--gen-length", "16", "--steps", "4",
                     "--block-length", "8", "--device", "cpu", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "steps 4 (2 per block" in out and "speedup:" in out and "agreement:" in out, out
    assert "uncached [" in out and "cached [" in out  # both answers decoded and shown
    assert len(measured) == 2 and costed == measured  # uncached, then cached: the printed FLOPs are the real ones
    assert measured[1] < measured[0]


def test_serve_answers_a_llada2_folder(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from dllm_cache.sampling.generate import generate
    from dllm_cache.serving import Defaults, build_app, load_engine
    from tests.test_serving_utils import live

    torch.manual_seed(0)
    tiny_llada2(vocab_size=2000, mask_token_id=2, pad_token_id=0, eos_token_id=1).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shipped.default_model_dir() / name, tmp_path / name)
    engine = load_engine(str(tmp_path), name="tiny", defaults=Defaults(gen_length=16, block_length=4, steps=8))
    assert engine.family == "llada2"
    prompt = "Question: what is 1 + 2?\nAnswer:"
    ids = torch.tensor([engine.encode(prompt)])

    def expected(config: CacheConfig | None) -> str:  # the library's answer: 8 steps over 4 blocks = 2 per block
        kw = dict(gen_length=16, block_length=4, steps=2, threshold=None, stop_at_eos=True)
        if config is None:
            out = generate(engine.model, ids, **kw)
        else:
            with dllm_cache.cache_enabled(engine.model, config):
                out = generate(engine.model, ids, **kw)
        tokens = out[0, ids.shape[1]:].tolist()
        tokens = tokens[:next((i for i, t in enumerate(tokens) if t in engine.eos_ids), len(tokens))]
        return engine.tokenizer.decode(tokens, skip_special_tokens=True)

    # computed before the server runs: its worker thread owns the model (and its hooks) while it serves
    want = {False: expected(None), True: expected(CacheConfig())}
    with live(build_app(engine)) as server:
        for cache in (False, True):
            r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                           json={"model": "tiny", "prompt": prompt, "max_tokens": 16, "cache": cache})
            assert r.status_code == 200, r.text
            text = r.json()["choices"][0]["text"]
            assert text and text == want[cache], cache
