"""The shipped trained model loads offline and solves fixed held-out problems uncached (CPU, fp32)."""

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

import dllm_cache  # noqa: F401
from dllm_cache.generate import generate
from eval.tiny.tasks import arith_prompt, is_correct

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "eval" / "tiny" / "model"


def test_shipped_model_answers_known_problems():
    model = AutoModel.from_pretrained(MODEL, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    assert sum(p.numel() for p in model.parameters()) > 10_000_000
    lines = (REPO / "eval/data/arith_synth/test.jsonl").read_text().splitlines()[:2]
    for example in map(json.loads, lines):  # both solved by the uncached model on CPU and H100
        ids = tok(arith_prompt(example["question"]), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = generate(model, ids, gen_length=64, steps=64, block_length=32)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert is_correct("arith", text, example["answer"]), text
