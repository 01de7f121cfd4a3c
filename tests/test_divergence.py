"""eval/divergence: the first step whose commits differ between two recorded runs, and where it falls."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_cache import CacheConfig
from eval.divergence import run as divergence

pytestmark = pytest.mark.lab  # imports the lab (eval/)

M = 9  # the mask id of these synthetic runs


def _run(commits: list[tuple[int, int]], P: int = 2, R: int = 16) -> list[torch.Tensor]:
    """Ids read at each step of a one-row run that commits (position, token) once per step, then the final ids."""
    x = torch.tensor([[5] * P + [M] * R], dtype=torch.int32)
    out = [x.clone()]
    for pos, tok in commits:
        x[0, P + pos] = tok
        out.append(x.clone())
    return out  # the last entry doubles as the final sequence


def test_first_divergence_is_the_step_whose_commit_differs():
    u = _run([(0, 1), (1, 2), (2, 3), (3, 4)])
    assert divergence.first_divergence(u, u, 0) is None
    c = _run([(0, 1), (1, 2), (2, 7), (3, 4)])
    assert divergence.first_divergence(u, c, 0) == (2, 2 + 2)  # step 2 committed another token at offset 2
    moved = _run([(0, 1), (4, 2), (2, 3), (3, 4)])  # step 1 committed another position
    assert divergence.first_divergence(u, moved, 0) == (1, 2 + 1)
    shorter = _run([(0, 1), (1, 2)])  # a run that stopped sooner and ends different
    assert divergence.first_divergence(u, shorter, 0) == (2, 2 + 2)


def test_locate_reports_kind_staleness_and_block():
    P, B = 2, divergence.BLOCK
    commits = [(i, 1) for i in range(2 * B)]  # one token per step: block 1 starts at step B
    u = _run(commits, P=P)
    c = _run(commits[:B + 3] + [(B + 3, 7)] + commits[B + 4:], P=P)
    (where,) = divergence.locate(u, c, P, CacheConfig(response_interval=4), mask_id=M)
    assert where == {"step": B + 3, "kind": "partial", "since_refresh": (B + 3) % 4, "block": 1, "offset_in_block": 3,
                     "steps_into_block": 3}


def test_row_steps_counts_each_rows_own_steps():
    """A batch runs until its slowest row is done; each row's own count is the first step after which it holds
    no mask, and a row still masked at the end counts the whole run."""
    fast = _run([(0, 1), (1, 2)], R=2)  # done after step 2, then waits two steps for the batch
    fast += [fast[-1]] * 2
    slow = _run([(0, 1), (0, 1), (0, 1), (1, 2)], R=2)  # done after step 4
    stuck = _run([(0, 1)] * 4, R=2)  # position 1 never committed
    batch = [torch.cat(rows) for rows in zip(fast, slow, stuck)]
    assert divergence.row_steps(batch, 2, M) == [2, 4, 4]
    assert divergence.row_steps([x[:, :3] for x in batch], 2, M) == [1, 1, 1]  # position 0 alone: done after step 1


@pytest.fixture(scope="module")
def random_proxy(tmp_path_factory):
    """An untrained tiny-config LLaDA proxy: decodes fast, and its near-uniform confidences make the cache's
    small perturbations change tokens, so the divergence bookkeeping has something to find."""
    from eval.tiny import train
    from eval.tiny.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    out = tmp_path_factory.mktemp("divergence") / "model"
    train.model_class("llada")(train.model_config(tok, "llada", tiny=True)).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_step_decoding_commits_one_token_per_step_and_reports(random_proxy, tmp_path, monkeypatch):
    """`--threshold 0`: one token per step (the frontier's step-decoding rows), every recorded step commits exactly
    one token in every row still masked, and the report says which decoding it ran."""
    from eval.tiny.evaluate import load_model

    monkeypatch.setattr(divergence, "GEN", 16)
    model, tok = load_model(str(random_proxy), "cpu", torch.float32)
    steps, out, P, _ = divergence.decode(model, tok, ["1+1=", "12+30="], None, "cpu", threshold=None)
    for before, after in zip(steps[:-1], steps[1:]):
        masked = (before[:, P:] == tok.mask_token_id).any(dim=1)
        assert ((after != before).sum(dim=1) == masked.int()).all()
    assert len(steps) - 1 <= 16 and torch.equal(steps[-1], out.to(torch.int32))
    base = tmp_path / "div_thr0.9"  # a dot in the name is not an extension: the 2026-12-03 run lost a file to it
    assert divergence.main(["--model", str(random_proxy), "--n", "3", "--threshold", "0", "--out", str(base)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["div_thr0.9.json", "div_thr0.9.md"]
    report = json.loads((tmp_path / "div_thr0.9.json").read_text())
    assert report["threshold"] is None and "one token per step" in (tmp_path / "div_thr0.9.md").read_text()
    for row in report["rows"]:
        assert row["response_interval"] == 8 and row["paired"]["n"] == 3 and row["steps_uncached"] <= 16
        assert row["row_steps_uncached"]["max"] <= row["steps_uncached"] and row["row_steps_cached"]["max"] <= 16
