"""The small-model pipeline on CPU: synthetic data, tokenizer, a few training steps with resume,
and the quality evaluation on a micro model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `eval/` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

import eval.tiny  # noqa: E402, F401
from eval.tiny import tasks  # noqa: E402
from eval.tiny.tokenizer import EOS, MASK, PAD, UNK, build_tokenizer  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


# ----------------------------------------------------------------------------- data
def test_generators_are_deterministic():
    assert tasks.generate_test_examples("arith", 30) == tasks.generate_test_examples("arith", 30)
    assert tasks.generate_test_examples("hotpot", 3) == tasks.generate_test_examples("hotpot", 3)
    a = tasks.make_arith(tasks.example_rng("arith", "train", 1, 7))
    b = tasks.make_arith(tasks.example_rng("arith", "train", 1, 7))
    assert a == b
    assert a != tasks.make_arith(tasks.example_rng("arith", "train", 1, 8))


_OPS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


def test_arith_examples_are_well_formed_and_long():
    import re

    lo, hi = tasks.ARITH_SOLUTION_TOKENS
    for ex in tasks.test_examples("arith", 100):
        steps, final = ex["answer"].split("\n#### ")
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", steps)
        assert 4 <= len(equations) <= 14  # 4-7 steps; "packs" steps have two equations
        for a, op, b, c in equations:  # every step is right, every quantity stays in 0..99
            assert _OPS[op](int(a), int(b)) == int(c), (a, op, b, c)
            assert op != "/" or int(a) % int(b) == 0
            assert all(0 <= int(v) <= tasks.MAX_VALUE for v in (a, b, c))
        assert int(final) == int(equations[-1][3])  # the answer is the last result
        assert lo <= tasks.count_tokens(" " + ex["answer"]) <= hi  # GSM8K-like lengths for gen 256
        # every amount the question states is used by the solution, in order
        amounts = [int(v) for v in re.findall(r"\d+", ex["question"])]
        used = [int(v) for v in re.findall(r"\d+", steps)]
        it = iter(used)
        assert all(any(u == a for u in it) for a in amounts), (ex["question"], steps)


def test_arith_drills_are_right_and_fit_the_response(tok):
    """Drills: every equation right and chained (each starts from the previous result), the
    prompt lists exactly the operations the solution performs, no unknown token, <= 250 tokens."""
    import re

    for i in range(200):
        ex = tasks.make_arith_drill(tasks.example_rng("arith", "train", 3, i))
        steps, final = ex["answer"].split("\n#### ")
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", steps)
        assert 12 <= len(equations) <= 24
        value = int(ex["question"].split()[0])
        for (a, op, b, c), asked in zip(equations, ex["question"][:-2].split(" , ")):
            assert int(a) == value and asked.split()[-2:] == [op, b]
            assert _OPS[op](int(a), int(b)) == int(c) and (op != "/" or int(a) % int(b) == 0)
            assert all(0 <= int(v) <= tasks.MAX_VALUE for v in (a, b, c))
            value = int(c)
        assert int(final) == value
        prompt, target = tasks.prompt_and_target("arith", ex)
        ids = tok([prompt, target], add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids[0] + ids[1]
        assert len(ids[1]) <= tasks.ARITH_SOLUTION_TOKENS[1]


def test_hotpot_examples_need_two_paragraphs():
    lo, hi = tasks.TEST_CONTEXT_TOKENS
    for ex in tasks.test_examples("hotpot", 40):
        assert set(ex) >= {"context", "question", "answer", "solution", "kind"}
        assert len(ex["answer"].split()) == 1 and ex["solution"].endswith("\n#### " + ex["answer"])
        assert lo <= tasks.count_tokens(ex["context"]) <= hi
        paragraphs = ex["context"].split("\n")
        facts = ex["solution"].split("\n")[0].rstrip(".").split(". ")
        assert len(facts) == 2
        if ex["kind"] == "comparison":
            (a, ya), (b, yb) = [(f.split()[0], f.split()[-1]) for f in facts]
            assert ex["answer"] in (a, b) and ya != yb
            for person, year in ((a, ya), (b, yb)):  # each year is stated in that person's own paragraph
                own = [p for p in paragraphs if p.split(": ", 1)[1].startswith(person + " is ")]
                assert len(own) == 1 and f"{person} was born" in own[0] and year in own[0]
        else:
            person, city = facts[0].split(" was born in ")
            person_par = [p for p in paragraphs if p.split(": ", 1)[1].startswith(person + " is ")]
            city_par = [p for p in paragraphs if p.split(": ", 1)[1].startswith(city + " is ")]
            assert len(person_par) == 1 and len(city_par) == 1 and person_par != city_par
            assert city in person_par[0] and ex["answer"] in city_par[0] and ex["answer"] not in person_par[0]
    # distractor count is a parameter: more distractors, longer context
    rng_a, rng_b = tasks.example_rng("hotpot", "x", 0, 0), tasks.example_rng("hotpot", "x", 0, 0)
    short, long = tasks.make_hotpot(rng_a, 2), tasks.make_hotpot(rng_b, 60)
    assert tasks.count_tokens(long["context"]) > 4 * tasks.count_tokens(short["context"])
    assert long["context"].count("Paragraph ") == 62


def test_single_hop_training_rows(tok):
    from eval.tiny.train import BatchMaker

    for i in range(30):
        ex = tasks.make_hotpot(tasks.example_rng("hotpot", "train", 5, i), 6, hops=1)
        assert ex["kind"].startswith("single_") and ex["solution"].count(".") == 1
        subject = ex["solution"].split()[0]  # the person or city the one fact is about
        own = [p for p in ex["context"].split("\n") if p.split(": ", 1)[1].startswith(subject + " is ")]
        assert len(own) == 1 and ex["answer"] in own[0], ex
    with pytest.raises(ValueError, match="hops"):
        tasks.make_hotpot(tasks.example_rng("hotpot", "train", 5, 0), 6, hops=3)
    maker = BatchMaker(tok, seed=1, seq_len=1024, batch_size=2, hotpot_frac=1.0, max_rows=8, single_hop_frac=1.0)
    batch = maker.make(0)
    prompt = tok.decode(batch.input_ids[0][batch.attention_mask[0].bool()][: -batch.response_len])
    assert any(q in prompt for q in ("In which city was", "In which country is", "On which river lies"))


def test_shipped_helpers_match_the_training_task():
    """dllm_cache.shipped copies the arith task's prompt and answer check (the library may not
    import eval/): they must agree with eval/tiny/tasks.py."""
    from dllm_cache import shipped

    examples = [json.loads(line) for line in shipped.default_prompts_file().read_text().splitlines()[:20]]
    assert examples and all("question" in e and "####" in e["answer"] for e in examples)
    for e in examples:
        assert shipped.arith_prompt(e["question"]) == tasks.arith_prompt(e["question"])
    for text, gold in [(" 3 + 4 = 7.\n#### 7", "#### 7"), ("#### 007", "#### 7"), ("no number", "#### 1"),
                       ("1 + 1 = 2", "#### 2"), ("#### -3", "#### -3"), ("#### 5", "#### 6")]:
        assert shipped.is_correct(text, gold) == tasks.is_correct("arith", text, gold)


def test_scoring():
    assert tasks.is_correct("arith", "... = 24.\n#### 24", "x\n#### 24")
    assert not tasks.is_correct("arith", "#### 25", "#### 24")
    assert tasks.is_correct("hotpot", "Xa was born in Bo. Bo is in Kelia.\n#### kelia", "Kelia")
    assert not tasks.is_correct("hotpot", "Xa was born in Kelia.\n#### Bo", "Kelia")
    assert tasks.is_correct("hotpot", "Kelia", "Kelia")  # a bare answer still counts


def test_written_test_files_match_the_generators():
    for family, path, fields in (
        ("arith", tasks.ARITH_FILE, {"question", "answer"}),
        ("hotpot", tasks.HOTPOT_FILE, {"context", "question", "answer", "solution", "kind"}),
    ):
        rows = tasks.read_jsonl(path)
        assert len(rows) == tasks.N_TEST >= 500
        assert all(set(r) == fields for r in rows[:5])
        expected = tasks.generate_test_examples(family, 5)
        assert rows[:5] == [{k: e[k] for k in fields} for e in expected]
        readme = (path.parent / "README.md").read_text()
        assert "SYNTHETIC" in readme and "python -m eval.tiny.tasks --write" in readme


def test_train_stream_is_disjoint_from_test(tok):
    from eval.tiny.train import BatchMaker

    test_filter = tasks.TestPromptFilter()
    test_prompts = [tasks.prompt_and_target("arith", ex)[0] for ex in tasks.test_examples("arith")]
    assert all(p in test_filter for p in test_prompts)
    # different seed streams: the raw training stream starts elsewhere
    stream = tasks.train_examples("arith")
    first = [next(stream) for _ in range(200)]
    assert first[:20] != tasks.test_examples("arith", 20)
    # and the batches never contain a test prompt
    maker = BatchMaker(tok, seed=tasks.TRAIN_SEED, seq_len=256, batch_size=4, hotpot_frac=0.3, max_rows=64)
    assert maker.test_filter.keys == test_filter.keys
    seen_rows = 0
    for step in range(12):
        batch = maker.make(step)
        R = batch.response_len
        for row, mask in zip(batch.input_ids, batch.attention_mask):
            prompt_ids = row[: len(row) - R][mask[: len(row) - R].bool()].tolist()
            prompt = tok.decode(prompt_ids)
            assert prompt not in test_filter
            assert prompt.endswith("Answer:")
            seen_rows += 1
        # the response region: answer then eos padding, no pads or masks
        response = batch.input_ids[:, -R:]
        assert (response != tok.pad_token_id).all() and (response != tok.mask_token_id).all()
        assert (response[:, -1] == tok.eos_token_id).all()
    assert seen_rows > 12
    # a forced duplicate of a test question is dropped by the filter
    assert tasks.prompt_and_target("arith", tasks.test_examples("arith", 1)[0])[0] in maker.test_filter


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips(tok, tmp_path):
    assert 300 <= len(tok) <= 2100
    ids = {tok.convert_tokens_to_ids(t) for t in (PAD, EOS, MASK, UNK)}
    assert len(ids) == 4 and max(ids) < 4
    assert (tok.pad_token, tok.eos_token, tok.mask_token) == (PAD, EOS, MASK)

    arith = tasks.test_examples("arith", 1)[0]
    prompt, target = tasks.prompt_and_target("arith", arith)
    ids = tok(prompt + target, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == prompt + target
    assert "#### " in target and "\n" in target
    # digits are single tokens: "#### 93" -> "▁####", "▁9", "3"
    assert tok.tokenize(" #### 93") == ["\u2581####", "\u25819", "3"]
    gen = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] * 5
    decoded = tok.decode(gen, skip_special_tokens=True)
    assert decoded == target and tasks.is_correct("arith", decoded, arith["answer"])

    hot = tasks.test_examples("hotpot", 1)[0]
    prompt, target = tasks.prompt_and_target("hotpot", hot)
    ids = tok(prompt + target, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert len(ids) == tasks.count_tokens(prompt + target)
    assert tok.decode(ids) == prompt + target
    assert len(tok(" " + hot["answer"], add_special_tokens=False)["input_ids"]) == 1  # one-word answers: one token
    target_ids = tok(target, add_special_tokens=False)["input_ids"]
    assert len(target_ids) <= 24  # the chain and the answer fit the gen-32 window
    decoded = tok.decode(target_ids + [tok.eos_token_id] * 3, skip_special_tokens=True)
    assert decoded == target and tasks.is_correct("hotpot", decoded, hot["answer"])

    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again(prompt, add_special_tokens=False)["input_ids"] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert again.mask_token_id == tok.mask_token_id and again.padding_side == "left"


def test_vocabulary_is_closed(tok):
    for family in ("arith", "hotpot"):
        stream = tasks.train_examples(family, seed=987, distractors=(1, 10))
        texts = ["".join(tasks.prompt_and_target(family, next(stream))) for _ in range(100)]
        for ids in tok(texts, add_special_tokens=False)["input_ids"]:
            assert tok.unk_token_id not in ids


# ----------------------------------------------------------------------------- train + evaluate
def test_train_resume_and_evaluate(tmp_path):
    from eval.tiny import evaluate, train

    common = [
        "--out",
        str(tmp_path / "run"),
        "--tiny-config",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--seq-len",
        "256",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--no-final-eval",
        "--warmup",
        "2",
    ]
    first = train.main(common + ["--steps", "3", "--export-dir", str(tmp_path / "export")])
    assert first["step"] == 3 and first["tokens"] > 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())
    assert state["step"] == 3
    second = train.main(common + ["--steps", "5", "--resume"])
    assert second["step"] == 5
    assert second["tokens"] > first["tokens"] and second["examples"] > first["examples"]
    state = json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())
    assert state["step"] == 5

    export = tmp_path / "export"
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert all(p.stat().st_size <= 15_000_000 for p in export.iterdir())

    import torch
    from transformers import AutoModel, AutoTokenizer

    import dllm_cache  # noqa: F401

    model = AutoModel.from_pretrained(str(export))
    tok = AutoTokenizer.from_pretrained(str(export))
    assert type(model).__name__ == "LLaDAModelLM"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.mask_token_id == tok.mask_token_id
    assert model.config.embedding_size % 64 == 0 and model.config.vocab_size == len(tok)

    out = tmp_path / "results" / "tiny_quality.json"
    report = evaluate.main(
        [
            "--model",
            str(export),
            "--n",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-progress",
            "--arith-gen",
            "16,16,8",
            "--hotpot-gen",
            "8,8,8",
            "--hotpot-distractors",
            "3",
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["n"] == 2 and saved["families"] == ["arith", "hotpot"]
    assert saved["generation"]["arith"] == {"gen_length": 16, "steps": 16, "block_length": 8}
    assert set(saved["summary"]) == {"arith", "hotpot"}
    names = [name for name, _, _ in evaluate.cache_configs()]
    assert names[:2] == ["uncached", "default"] and len(names) == len(set(names)) == 8
    assert len(saved["results"]) == 2 * len(names)
    for row in saved["results"]:
        assert {
            "config",
            "task",
            "accuracy",
            "n",
            "agreement_with_uncached",
            "seconds",
            "recompute_fraction",
            "cache_stats",
            "flops_per_example",
            "flops_vs_uncached",
            "transfer_ratio",
            "response_interval",
            "prompt_interval",
        } <= set(row)
        assert row["n"] == 2 and 0.0 <= row["accuracy"] <= 1.0
        if row["config"] == "uncached":
            assert row["cache_stats"] is None and row["agreement_with_uncached"] == 1.0
        else:
            assert row["cache_stats"]["steps"] > 0 and 0.0 <= row["recompute_fraction"] <= 1.0
            if row["config"] in ("default", "ratio=1.0"):
                assert row["recompute_fraction"] == pytest.approx(row["transfer_ratio"])
    default = next(r for r in saved["results"] if r["config"] == "default" and r["task"] == "hotpot")
    assert default["flops_vs_uncached"] is None or default["flops_vs_uncached"] < 1.0
    assert out.with_suffix(".md").read_text().count("\n| ") >= 8
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["summary"] == saved["summary"]
    # tables and plots can be re-rendered from the JSON alone (GPU runs return few files)
    again = tmp_path / "again" / "q.json"
    evaluate.main(["--from-json", str(out), "--out", str(again)])
    assert again.with_suffix(".md").read_text() == out.with_suffix(".md").read_text()
    assert again.with_suffix(".png").is_file() and json.loads(again.read_text()) == saved

    # Parallel decoding: threshold 0 unmasks a whole block per step -> 2 forwards for 2 blocks,
    # with and without the cache; the fixed schedule takes all 16 steps.
    thr = tmp_path / "results" / "thr.json"
    evaluate.main(["--model", str(export), "--n", "2", "--device", "cpu", "--out", str(thr), "--no-progress",
                   "--families", "arith", "--arith-gen", "16,16,8", "--threshold", "0", "--no-sweep"])
    rows = {r["config"]: r for r in json.loads(thr.read_text())["results"]}
    assert set(rows) == {"uncached", "default", "uncached thr=0.0", "default thr=0.0", "Kr=2 thr=0.0"}
    assert rows["uncached"]["steps_per_generation"] == rows["default"]["steps_per_generation"] == 16
    for name in ("uncached thr=0.0", "default thr=0.0", "Kr=2 thr=0.0"):
        assert rows[name]["threshold"] == 0.0 and rows[name]["steps_per_generation"] == 2
        assert rows[name]["flops_per_example"] is None  # analytic FLOPs assume the fixed schedule
    assert rows["default thr=0.0"]["cache_stats"]["steps"] == 2  # both examples in one batch


def test_suffix_masking_hides_everything_after_a_cut_within_the_target():
    """Suffix rows: from some cut inside the target (or at its end) every response token is masked,
    the prompt never is; the cut falls at different places; plain rows (suffix_frac 0) do not
    always mask a whole suffix."""
    import torch

    from eval.tiny import train

    torch.manual_seed(0)
    rows, P, R, target, mask_id, eos = 64, 6, 12, 7, 99, 2
    ids = torch.randint(3, 50, (rows, P + R))
    ids[:, P + target :] = eos
    batch = train.Batch("arith", ids, torch.ones_like(ids), R, 0)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, attention_mask=None):
            seen["x"] = x.clone()
            return type("Out", (), {"logits": torch.zeros(*x.shape, 100, requires_grad=True)})()

    def suffix_starts(x):
        masked = x == mask_id
        assert not masked[:, :P].any()
        starts = []
        for row in masked[:, P:]:
            i = R
            while i > 0 and row[i - 1]:
                i -= 1
            starts.append(i)  # first position of the all-masked tail
        return starts

    loss, count = train.masked_diffusion_loss(Spy(), batch, mask_id, suffix_frac=1.0, eos_id=eos)
    starts = suffix_starts(seen["x"])
    assert all(s <= target for s in starts) and len(set(starts)) > 3
    assert torch.isfinite(loss) and count > 0
    train.masked_diffusion_loss(Spy(), batch, mask_id, suffix_frac=0.0, eos_id=eos)
    assert any(s > target for s in suffix_starts(seen["x"]))
    with pytest.raises(ValueError, match="eos_id"):
        train.masked_diffusion_loss(Spy(), batch, mask_id, suffix_frac=0.5)


def test_probe_counts_every_result_and_hop(tok):
    """eval.tiny.probe on a random micro model: one check per '=' of each solution, two hops per
    chain question, scores within the counts (the trained model's scores: test_shipped_model)."""
    import torch

    from eval.tiny import probe, train

    torch.manual_seed(0)
    examples = tasks.test_examples("arith", 2)
    for arch in ("llada", "dream"):  # Dream: the logits one position earlier are read
        model = train.model_class(arch)(train.model_config(tok, arch, tiny=True)).eval()
        right, total = probe.equation_accuracy(model, tok, examples)
        assert total == sum(ex["answer"].count(" = ") for ex in examples) and 0 <= right <= total
        hops = probe.hop_accuracy(model, tok, distractors=1, n=3)
        assert {k: t for k, (_, t) in hops.items()} == {"hop1": 3, "hop2": 3}
