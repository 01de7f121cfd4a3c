"""The long-context task kv-retrieval (eval/long_context/task.py): text and device-side ids agree, the
held-out set is a pure function of its seed, prompts are 2k-3.4k tokens, and scoring reads the value."""

from __future__ import annotations

import random

import pytest
import torch

from eval.long_context import task
from eval.tiny.tokenizer import load_or_build

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests


@pytest.fixture(scope="module")
def tok():
    return load_or_build("eval/tiny/model")


@pytest.mark.parametrize("n_records", [1, 7, 40])
def test_render_ids_is_the_tokenizers_encoding_of_the_text(tok, n_records):
    vocab = task.Vocab(tok)
    for i in range(3):
        ex = task.make_example(random.Random(f"t/{n_records}/{i}"), n_records)
        prompt, response = task.render_ids(vocab, *task.example_tensors(ex), task.GEN["gen_length"])
        assert prompt[0].tolist() == tok(task.prompt_of(ex), add_special_tokens=False)["input_ids"]
        target = tok(task.target_of(ex), add_special_tokens=False)["input_ids"]
        assert response[0].tolist() == target + [tok.eos_token_id] * (task.GEN["gen_length"] - len(target))
        assert tok.unk_token_id not in prompt[0].tolist()


def test_held_out_set_is_fixed_by_its_seed_and_long():
    a, b = task.test_examples(4), task.test_examples(4)
    assert a == b
    assert a != task.test_examples(4, seed=task.TEST_SEED + 1)
    for ex in a:
        assert len(set(ex["keys"])) == len(ex["keys"])  # unique keys: the question has one answer
        assert ex["values"][ex["query"]] == ex["answer"] and ex["key"] in ex["question"]
        assert 2000 <= task.prompt_tokens(ex) <= 3400


def test_train_batch_rows(tok):
    vocab = task.Vocab(tok)
    g = torch.Generator().manual_seed(0)
    ids = task.train_batch(vocab, g, rows=3, n_records=12, gen_length=16, device="cpu")
    assert ids.shape == (3, len(vocab.head) + 12 * task.RECORD_TOKENS + 13 + 16)
    for row in ids:
        text = tok.decode(row.tolist())
        keys = [line.split()[3] for line in text.splitlines() if line.startswith("The number of")]
        assert len(keys) == 12 and len(set(keys)) == 12
        asked = text.split("Which is the number of ")[1].split("?")[0]
        value = text.split(f"The number of {asked} is ")[1][:4]
        assert text.split("Answer:")[1].startswith(f" The number of {asked} is {value}.")


def test_scoring():
    assert task.answer_key(" The number of Zypaen is 0042.") == "0042"
    assert task.is_correct(" The number of Zypaen is 0042.", "0042")
    assert not task.is_correct(" The number of Zypaen is 42.", "0042")
    assert task.answer_key(" The number of") is None
    with pytest.raises(ValueError, match="n_records"):
        task.make_example(random.Random(0), len(task.KEYS) + 1)


def test_annotate_marks_a_task_the_model_did_not_learn():
    from eval.long_context.run import NOT_LEARNT, annotate

    def report(acc):
        rows = [{"name": "uncached", "config": None, "accuracy": acc, "agreement_with_uncached": None, "speedup": None},
                {"name": "default", "config": {}, "accuracy": acc, "agreement_with_uncached": 0.9, "speedup": 5.0}]
        return {"rows": rows, "init_from": "m", "mean_prompt_tokens": 2709.0, "skipped": ["x"],
                "training": {"train_steps": 3, "train_tokens": 1e6, "train_seconds": 1.0, "val": [{"accuracy": 0.0}]}}

    low = annotate(report(NOT_LEARNT / 2))
    assert low["note"].startswith("NOT LEARNT") and "Rows skipped at the deadline: x." in low["note"]
    assert low["rows"][0]["agreement_with_uncached"] == 1.0 and low["rows"][0]["speedup"] == 1.0
    assert low["rows"][1]["speedup"] == 5.0  # cached rows untouched
    assert annotate(low) == low  # idempotent
    assert "note" not in annotate(report(0.95))


def test_curriculum_advances_only_on_a_passing_validation_and_never_past_the_held_out_range():
    from eval.long_context.run import Curriculum, parse_stages

    cur = Curriculum([(2, 4), (4, 8), (185, 300)], advance_at=0.9, replay=0.25)
    rng = random.Random(0)
    assert cur.range == (2, 4) and not cur.final
    assert {cur.records(rng) for _ in range(300)} == {2, 3, 4}  # the first stage: no replay, its whole range
    assert not cur.update(0.89) and cur.range == (2, 4)
    assert cur.update(0.9) and cur.range == (4, 8)
    draws = [cur.records(rng) for _ in range(4000)]
    assert min(draws) == 2 and max(draws) == 8
    assert 0.12 < sum(d < 4 for d in draws) / len(draws) < 0.22  # replay 0.25 of rows from 2..4: 2/3 of them below 4
    assert cur.update(0.95) and cur.final and cur.range == (185, 300)
    assert not cur.update(1.0) and cur.range == (185, 300)  # the held-out range is the last stage
    assert not cur.to_final()
    early = Curriculum([(2, 4), (185, 300)])
    assert early.to_final() and early.final
    assert parse_stages("2-4, 8-16,32") == [(2, 4), (8, 16), (32, 32)]
    for bad in ("2-x", "a"):
        with pytest.raises(ValueError, match="--stages"):
            parse_stages(bad)
    with pytest.raises(ValueError, match="lo-hi"):
        Curriculum([(4, 2)])
    with pytest.raises(ValueError, match="at least one stage"):
        Curriculum([])


@pytest.mark.parametrize("shifted", [False, True], ids=["llada", "dream"])
def test_kv_loss_is_the_sft_loss_with_the_value_digits_weighted(tok, shifted):
    """value_weight 1 is eval.tiny.train's masked_diffusion_loss (same draws; Dream through its shifted
    head); the loss is affine in the weight, and VALUE_OFFSET points at the value's digits in the response."""
    from dllm_cache.models.tiny import tiny_dream, tiny_llada
    from eval.long_context.run import kv_loss
    from eval.tiny.train import Batch, masked_diffusion_loss

    vocab = task.Vocab(tok)
    ex = task.make_example(random.Random("offset"), 5)
    _, response = task.render_ids(vocab, *task.example_tensors(ex), task.GEN["gen_length"])
    digits = tok(" " + ex["answer"], add_special_tokens=False)["input_ids"]
    assert response[0, task.VALUE_OFFSET:task.VALUE_OFFSET + task.DIGITS].tolist() == digits
    model = tiny_dream(vocab_size=2048) if shifted else tiny_llada(vocab_size=2048, embedding_size=2048)
    ids = task.train_batch(vocab, torch.Generator().manual_seed(1), rows=6, n_records=3, gen_length=16, device="cpu")

    def ours(w):
        return kv_loss(model, ids, 16, tok.mask_token_id, tok.eos_token_id, torch.Generator().manual_seed(5), shifted, 0.5, w)

    ref, _ = masked_diffusion_loss(model, Batch("kv", ids, None, 16, 0), tok.mask_token_id,
                                   generator=torch.Generator().manual_seed(5), shifted=shifted, suffix_frac=0.5,
                                   eos_id=tok.eos_token_id)
    with torch.no_grad():
        one, two, four = ours(1.0), ours(2.0), ours(4.0)
        ref = ref.detach()
    torch.testing.assert_close(one, ref)
    assert float(two - one) > 0  # some digit was masked in 6 rows
    torch.testing.assert_close(four - one, 3 * (two - one))


def test_training_curves_of_the_committed_runs_draw(tmp_path):
    """eval.long_context.curve reads each committed run's learning curve (the curriculum reached the held-out
    range, 185-300 records) and draws it; a report without one is refused with a clear message."""
    import gzip
    import json
    from pathlib import Path

    from eval.long_context import curve

    files = [Path(f"eval/results/frontier_{m}-kv.json.gz") for m in ("llada", "dream")]
    by_model = curve.curves(files)
    assert list(by_model) == ["llada-kv", "dream-kv"]
    assert all(points[-1]["records"] == [185, 300] and points[-1]["accuracy"] >= 0.9 for points in by_model.values())
    assert curve.main([*map(str, files), "--out", str(tmp_path / "c.png")]) == 0 and (tmp_path / "c.png").stat().st_size > 0
    bare = tmp_path / "frontier_x.json.gz"
    bare.write_bytes(gzip.compress(json.dumps({"model": "x", "rows": []}).encode()))
    with pytest.raises(SystemExit, match="no training.curve"):
        curve.curves([bare])
