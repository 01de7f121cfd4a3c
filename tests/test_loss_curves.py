"""eval.tiny.loss_curves reads the committed training logs, gzipped or plain (issue 24, item 5)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from eval.tiny import loss_curves

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

PROXY = Path(__file__).resolve().parents[1] / "eval" / "results" / "proxy_training"


def test_committed_logs_give_the_committed_curves():
    """loss_curves.json.gz was parsed from these four logs (two stored gzipped, two plain)."""
    logs = [PROXY / n for n in ("train_llada.log.gz", "train_dream.log.gz", "train_llada_large.log", "train_dream_large.log")]
    runs = {loss_curves.run_name(p): loss_curves.parse_log(loss_curves.read_log(p)) for p in logs}
    assert list(runs) == ["llada", "dream", "llada_large", "dream_large"]
    assert runs == json.loads(gzip.decompress((PROXY / "loss_curves.json.gz").read_bytes()))


def test_gzipped_and_plain_logs_read_the_same(tmp_path):
    text = "[train] step 10 tokens 1.0M loss 2.5\n"
    (tmp_path / "train_x.log").write_text(text)
    (tmp_path / "train_y.log.gz").write_bytes(gzip.compress(text.encode()))
    assert loss_curves.read_log(tmp_path / "train_x.log") == loss_curves.read_log(tmp_path / "train_y.log.gz") == text
    assert [loss_curves.run_name(tmp_path / n) for n in ("train_x.log", "train_y.log.gz")] == ["x", "y"]
