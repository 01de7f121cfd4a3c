"""The LLaDA 2.x lab scripts (eval/llada2): the bench's grouped MoE, a tiny bench run, the deviation measure."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dllm_cache import CacheConfig
from dllm_cache.models.tiny import tiny_llada2
from eval.llada2 import bench
from eval.llada2.deviation import teacher_forced
from eval.llada2.grouped_moe import GroupedMoeBlock, swap_in_grouped

# lab: imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests
pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("one_thread")]




def test_grouped_moe_equals_per_expert_moe():
    """Both paths of the bench's MoE (grouped matmul where torch has it, padded bmm) equal the modelling code's."""
    model, grouped = tiny_llada2(seed=3), tiny_llada2(seed=3)
    swap_in_grouped(grouped, copy_weights=True)
    assert isinstance(grouped.model.layers[1].mlp, GroupedMoeBlock)
    ids = torch.randint(0, 250, (2, 16))
    expected = model(ids, block_length=8).logits
    paths = ["grouped", "padded"] if hasattr(torch, "_grouped_mm") else ["padded"]
    for path in paths:
        GroupedMoeBlock.used = path  # "padded" forces the fallback
        assert torch.allclose(grouped(ids, block_length=8).logits, expected, atol=1e-4)
    GroupedMoeBlock.used = None


def test_tiny_bench_writes_its_rows(tmp_path, monkeypatch):
    stem = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cpu", "--tiny", "--batches", "2", "--gens", "32",
                                      "--out", str(stem)])
    bench.main()
    data = json.loads(stem.with_suffix(".json").read_text())
    assert [r["row"] for r in data["rows"]] == list(bench.ROWS)
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 13 for r in data["rows"])  # 32 tokens at 2.55 per step
    assert "tokens/s" in stem.with_suffix(".md").read_text()


def test_deviation_is_zero_when_nothing_is_stale():
    model = tiny_llada2(seed=0)
    ids = torch.randint(0, 250, (2, 32))
    assert teacher_forced(model, CacheConfig(transfer_ratio=1.0), ids, 32, 32, 2.55) == (1.0, 0.0)
    agree, err = teacher_forced(model, CacheConfig(), ids, 32, 32, 2.55)
    assert agree < 1 and err > 0  # the default reuses features: a measurable deviation
