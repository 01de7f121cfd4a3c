"""The local lm-eval tasks (dllm_cache/integrations/lm_eval/tasks/): standard definitions on local data, and their scorers.

The identity tests build lm-eval's standard task (gsm8k, gsm8k_cot, longbench_hotpotqa) from the
installed lm-eval YAML with lm-eval's own TaskManager, serving the Hugging Face download from
the vendored files, and check that our local task renders the same prompts (few-shot context
included), with the same generation settings, filters, metrics and scores.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")

from lm_eval.tasks import TaskManager  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "dllm_cache" / "integrations" / "lm_eval" / "tasks"
DATA_DIR = REPO / "eval" / "data"
LM_EVAL_TASKS = Path(sys.modules["lm_eval.tasks"].__file__).resolve().parent
N_DOCS = 12  # documents rendered per identity test


def _by_path(name: str):
    """tasks/<name>.py loaded by path, the way lm-eval's `!function` loads it."""
    spec = importlib.util.spec_from_file_location(f"dllm_cache_tasks_{name}", TASKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data = _by_path("data")
scoring = _by_path("scoring")


def _jsonl(path: Path) -> list[dict]:
    """Records of a .jsonl or gzipped .jsonl.gz file (the large vendored files are gzipped)."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8") if path.suffix == ".gz" else path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _local_task(name: str):
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load([name])["tasks"][name]


def _standard_task(folder: str, name: str, hub: dict, monkeypatch):
    """lm-eval's own task `name` from the installed lm_eval/tasks/<folder>, its
    datasets.load_dataset(path, name) answered from `hub` (no network)."""

    def fake_load_dataset(path=None, name=None, **kwargs):
        if (path, name) not in hub:
            raise AssertionError(f"unexpected dataset request {(path, name)}; expected one of {sorted(hub)}")
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in hub[(path, name)].items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    manager = TaskManager(include_path=str(LM_EVAL_TASKS / folder), include_defaults=False)
    return manager.load([name])["tasks"][name]


def _requests(task, limit: int = N_DOCS) -> list[tuple]:
    task.set_fewshot_seed(1234)  # lm-eval's default fewshot_random_seed
    task.build_all_requests(limit=limit)
    return [(inst.doc_id, inst.arguments) for inst in task.instances]


def _scores(task, responses: list[str]) -> list[dict]:
    """Metrics per document after the task's own filters, for the given model outputs."""
    for inst, text in zip(task.instances, responses):
        inst.resps = [text]
    task.apply_filters()
    out = []
    for inst in task.instances:
        for key, filtered in sorted(inst.filtered_resps.items()):
            result = task.process_results(inst.doc, [filtered])
            out.append({f"{metric},{key}": value for metric, value in result.items()})
    return out


def _same_definition(ours, theirs, data_keys=("task", "custom_dataset", "dataset_path", "dataset_name", "metadata")):
    a = {k: v for k, v in ours.config.to_dict().items() if k not in data_keys}
    b = {k: v for k, v in theirs.config.to_dict().items() if k not in data_keys}
    assert a == b
    assert ours.VERSION == theirs.VERSION


GSM8K_OUTPUTS = [
    "Natalia sold 48/2 = 24 clips.\n#### 72",
    "The answer is 18.",
    "#### 1,000",
    "She pays $5.00 so #### $5",
    "no number here",
    "3 + 4 = 7. The answer is 7.",
]


@pytest.mark.parametrize(
    "local, folder, standard", [("gsm8k_local", "gsm8k", "gsm8k"), ("gsm8k_cot_local", "gsm8k", "gsm8k_cot")]
)
def test_gsm8k_tasks_equal_lm_eval_standard(local, folder, standard, monkeypatch):
    hub = {("openai/gsm8k", "main"): {"train": _jsonl(DATA_DIR / "gsm8k" / "train.jsonl.gz"),
                                      "test": _jsonl(DATA_DIR / "gsm8k" / "test.jsonl")}}
    ours = _local_task(local)
    theirs = _standard_task(folder, standard, hub, monkeypatch)
    _same_definition(ours, theirs)
    mine, reference = _requests(ours), _requests(theirs)
    assert len(mine) == N_DOCS and mine == reference
    context = mine[0][1][0]
    shots = ours.config.num_fewshot
    assert shots == (5 if local == "gsm8k_local" else 8)
    assert context.count("Question:" if local == "gsm8k_local" else "Q:") == shots + 1  # few-shot context is there
    outputs = (GSM8K_OUTPUTS * N_DOCS)[:N_DOCS]
    scored = _scores(ours, outputs)
    assert scored == _scores(theirs, outputs)
    assert {k for s in scored for k in s} == {"exact_match,strict-match", "exact_match,flexible-extract"}


def test_gsm8k_local_scores_as_lm_eval():
    """strict-match needs "#### N"; flexible-extract takes the last number."""
    task = _local_task("gsm8k_local")
    task.build_all_requests(limit=1)
    gold = task.doc_to_target(task.instances[0].doc).split("####")[-1].strip()  # "18"
    by_text = {}
    for text in (f"so she makes {gold} dollars", f"blah\n#### {gold}", "#### 17"):
        by_text[text] = _scores(task, [text])[0] | _scores(task, [text])[1]
    assert by_text[f"blah\n#### {gold}"] == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}
    assert by_text[f"so she makes {gold} dollars"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    assert by_text["#### 17"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}


def _stub_longbench_dependencies(monkeypatch):
    """lm-eval's longbench/metrics.py imports jieba, fuzzywuzzy and rouge at import time; the QA
    F1 it computes uses none of them, so empty stand-ins let the standard task load."""
    fuzzywuzzy = types.ModuleType("fuzzywuzzy")
    fuzzywuzzy.fuzz = types.SimpleNamespace()
    rouge = types.ModuleType("rouge")
    rouge.Rouge = object
    for name, module in (("jieba", types.ModuleType("jieba")), ("fuzzywuzzy", fuzzywuzzy), ("rouge", rouge)):
        monkeypatch.setitem(sys.modules, name, module)
    _forget_longbench_metrics(monkeypatch)


def _forget_longbench_metrics(monkeypatch):
    """lm-eval caches task modules in sys.modules: load longbench/metrics.py afresh in this test
    and drop it again afterwards."""
    monkeypatch.setitem(sys.modules, "lm_eval.tasks.longbench.metrics", None)


def _lm_eval_longbench_metrics(monkeypatch):
    _stub_longbench_dependencies(monkeypatch)
    spec = importlib.util.spec_from_file_location("lb_metrics", LM_EVAL_TASKS / "longbench" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QA_OUTPUTS = ["Kansas Song", "\n the Kansas song.\nmore", "yes", "no", "", "Lawrence, Kansas", "The Rock Hill"]


def test_hotpotqa_long_equals_lm_eval_longbench(monkeypatch):
    ours = _local_task("hotpotqa_long")
    docs = [dict(d) for d in ours.test_docs()]
    _stub_longbench_dependencies(monkeypatch)
    hub = {("Xnhyacinth/LongBench", "hotpotqa"): {"test": docs}}
    theirs = _standard_task("longbench", "longbench_hotpotqa", hub, monkeypatch)
    _same_definition(ours, theirs, data_keys=("task", "custom_dataset", "dataset_path", "dataset_name", "metadata",
                                              "process_results"))
    mine, reference = _requests(ours, 4), _requests(theirs, 4)
    assert mine == reference
    assert mine[0][1][0].startswith("Answer the question based on the given passages. Only give me the answer")
    outputs = (QA_OUTPUTS * 4)[:4]
    assert _scores(ours, outputs) == _scores(theirs, outputs)
    assert set(_scores(ours, outputs)[0]) == {"score,none", "qa_f1_score,none"}


def test_longbench_qa_f1_equals_lm_eval_metrics(monkeypatch):
    metrics = _lm_eval_longbench_metrics(monkeypatch)
    golds = [["Kansas Song"], ["yes"], ["no", "No way"], ["Lawrence, Kansas"], ["The Rock Hill"], [""]]
    for answers in golds:
        for pred in QA_OUTPUTS + ["Kansas", "song kansas the", "Rock Hill Rock"]:
            doc = {"answers": answers}
            assert scoring.longbench_qa_f1_results(doc, [pred]) == metrics.get_qa_f1_with_score(doc, [pred])


def test_hotpotqa_official_scoring():
    em, f1 = scoring.hotpotqa_em, scoring.hotpotqa_f1
    assert em("The Kansas Song!", "Kansas Song") == 1.0 and f1("The Kansas Song!", "Kansas Song") == 1.0
    assert f1("Kansas", "Kansas Song") == pytest.approx(2 / 3)
    # the yes/no rule of hotpot_evaluate_v1.py: no partial credit when either side is yes/no/noanswer
    assert f1("yes it is", "yes") == 0.0 and f1("no", "yes") == 0.0 and f1("Yes.", "yes") == 1.0
    assert f1("yes", "yes sir") == 0.0 and scoring.qa_f1("yes", "yes sir") == pytest.approx(2 / 3)
    assert f1("", "") == 0.0 and em("", "") == 1.0  # as the official script scores an empty pair
    doc = {"answers": ["Kansas Song"]}
    assert scoring.hotpotqa_results(doc, ["\n Kansas Song.\nExplanation: ..."]) == {"exact_match": 1.0, "f1": 1.0}
    got = scoring.hotpotqa_results(doc, ["Song"])
    assert got["exact_match"] == 0.0 and got["f1"] == pytest.approx(2 / 3)


def test_hotpotqa_local_is_real_hotpotqa():
    task = _local_task("hotpotqa_local")
    docs = list(task.test_docs())
    records = _jsonl(DATA_DIR / "hotpotqa" / "distractor_600.jsonl.gz")
    assert len(docs) == len(records) == 600
    for doc, record in zip(docs[:50], records[:50]):
        assert doc["question"] == record["question"] and doc["answers"] == [record["answer"]]
        assert doc["context"].count("Passage ") >= len(record["context"])
        for i, (title, sentences) in enumerate(record["context"], 1):
            assert f"Passage {i}:\n{title}\n{''.join(sentences).strip()}" in doc["context"]
    assert set(task.config.metric_list[i]["metric"] for i in range(2)) == {"exact_match", "f1"}
    assert "CC BY-SA 4.0" in (DATA_DIR / "hotpotqa" / "LICENSE").read_text()
    task.build_all_requests(limit=1)
    prompt = task.instances[0].arguments[0]
    assert prompt.endswith(f"Question: {docs[0]['question']}\nAnswer:") and "Passage 10:" in prompt


def test_hotpotqa_long_padding():
    short = data.load_hotpotqa()["test"]
    long = data.load_hotpotqa_long()["test"]
    assert len(long) == len(short) == 600
    words = [len(doc["context"].split()) for doc in long]
    assert min(words) >= data.LONG_CONTEXT_WORDS and sum(words) / len(words) < data.LONG_CONTEXT_WORDS * 1.3
    records = _jsonl(DATA_DIR / "hotpotqa" / "distractor_600.jsonl.gz")
    for doc, record in zip(long.select(range(30)), records[:30]):
        titles = [block.split("\n")[1] for block in doc["context"].split("Passage ")[1:]]
        assert len(titles) == len(set(titles))  # no paragraph twice
        for title, sentences in record["context"]:  # every own paragraph (gold included) is kept
            assert f"\n{title}\n{''.join(sentences).strip()}" in doc["context"]
    again = data.load_hotpotqa_long()["test"]
    assert again[3]["context"] == long[3]["context"]  # deterministic
    smaller = data.load_hotpotqa_long(context_words="1500")["test"]
    assert len(smaller[3]["context"].split()) < len(long[3]["context"].split())
    with pytest.raises(ValueError, match="context_words"):
        data.load_hotpotqa_long(context_words=0)


def test_synth_loaders_read_jsonl_or_gz(tmp_path, monkeypatch):
    rows = [{"context": "P1: Ada lives in Paris.", "question": "Where?", "answer": "she lives there\n#### Paris"}]
    gz = tmp_path / "test.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("DLLM_CACHE_HOTPOTQA_SYNTH_FILE", str(tmp_path / "test.jsonl"))  # .gz found beside it
    doc = data.load_hotpotqa_synth()["test"][0]
    assert doc["answers"] == ["she lives there\n#### Paris"]
    assert scoring.hotpotqa_synth_results(doc, ["Ada went\n#### paris"]) == {"exact_match": 1.0, "f1": 1.0}
    assert scoring.hotpotqa_synth_results(doc, ["Paris\nmore"]) == {"exact_match": 1.0, "f1": 1.0}
    assert scoring.hotpotqa_synth_results(doc, ["London"])["exact_match"] == 0.0
    monkeypatch.setenv("DLLM_CACHE_HOTPOTQA_SYNTH_FILE", str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="DLLM_CACHE_HOTPOTQA_SYNTH_FILE"):
        data.load_hotpotqa_synth()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    monkeypatch.setenv("DLLM_CACHE_HOTPOTQA_SYNTH_FILE", str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="answer"):
        data.load_hotpotqa_synth()


def test_data_files_outside_a_checkout(tmp_path, monkeypatch):
    """As installed from the wheel (no eval/data beside the package): the shipped GSM8K test split is
    found, the train split is an error naming --data-dir, and --data-dir's folder (DLLM_CACHE_DATA_DIR)
    then serves it; a file's own variable still wins."""
    package = tmp_path / "site" / "dllm_cache"
    shipped_test = package / "integrations" / "lm_eval" / "gsm8k_data" / "test.jsonl"
    shipped_test.parent.mkdir(parents=True)
    shutil.copy(DATA_DIR / "gsm8k" / "test.jsonl", shipped_test)
    monkeypatch.setattr(data, "CHECKOUT_DATA", tmp_path / "site" / "eval" / "data")  # no checkout there
    monkeypatch.setitem(data.SHIPPED, data.GSM8K_TEST, shipped_test)
    for env in ("DLLM_CACHE_DATA_DIR", "DLLM_CACHE_GSM8K_FILE", "DLLM_CACHE_GSM8K_TRAIN_FILE"):
        monkeypatch.delenv(env, raising=False)
    assert data.data_file("DLLM_CACHE_GSM8K_FILE", data.GSM8K_TEST) == shipped_test
    with pytest.raises(FileNotFoundError, match=r"gsm8k/train.jsonl not found.*not shipped.*--data-dir DIR.*"
                                                r"DLLM_CACHE_DATA_DIR.*DLLM_CACHE_GSM8K_TRAIN_FILE"):
        data.load_gsm8k()
    folder = tmp_path / "data"
    (folder / "gsm8k").mkdir(parents=True)
    rows = [{"question": "1 + 1?", "answer": "#### 2"}]
    (folder / "gsm8k" / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setenv("DLLM_CACHE_DATA_DIR", str(folder))
    loaded = data.load_gsm8k()
    assert loaded["train"].to_list() == rows and len(loaded["test"]) == 1319
    assert data.data_file("DLLM_CACHE_GSM8K_TRAIN_FILE", data.GSM8K_TRAIN) == folder / "gsm8k" / "train.jsonl"
    monkeypatch.setenv("DLLM_CACHE_GSM8K_TRAIN_FILE", str(DATA_DIR / "gsm8k" / "train.jsonl"))  # the checkout ships it gzipped
    assert data.data_file("DLLM_CACHE_GSM8K_TRAIN_FILE", data.GSM8K_TRAIN) == DATA_DIR / "gsm8k" / "train.jsonl.gz"


def test_synth_tasks_on_the_shipped_files():
    arith = _local_task("arith_synth")
    arith.build_all_requests(limit=2)
    doc = arith.instances[0].doc
    assert arith.instances[0].arguments[0] == f"Question: {doc['question']}\nAnswer:"
    gold = doc["answer"].split("####")[-1].strip()
    assert scoring.arith_synth_results(doc, [f"1 + 2 = 3.\n#### {gold}"]) == {"exact_match": 1.0}
    assert scoring.arith_synth_results(doc, [f"the answer is {gold}"]) == {"exact_match": 0.0}  # no ####
    assert scoring.arith_synth_results(doc, ["#### 100000"]) == {"exact_match": 0.0}
    assert scoring.arith_synth_results({"answer": "x\n#### 1,000"}, ["#### 1000.0"]) == {"exact_match": 1.0}
    hotpot = _local_task("hotpotqa_synth")
    hotpot.build_all_requests(limit=1)
    prompt = hotpot.instances[0].arguments[0]
    assert prompt.startswith("Answer the question based on the given passages.") and prompt.endswith("\nAnswer:")


def test_every_local_task_loads():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = {"gsm8k_local", "gsm8k_cot_local", "hotpotqa_local", "hotpotqa_long", "hotpotqa_synth", "arith_synth"}
    assert names <= set(manager.all_tasks)
    assert (DATA_DIR / "gsm8k" / "LICENSE").read_text().startswith("MIT License")
    assert len(_jsonl(DATA_DIR / "gsm8k" / "train.jsonl.gz")) == 7473


def test_standard_task_errors(monkeypatch):
    standard = _by_path("standard")
    with pytest.raises(ValueError, match="base_task"):
        standard.standard_config({"task": "x"})
    with pytest.raises(FileNotFoundError, match="not found under"):
        standard.standard_config({"task": "x", "base_task": "gsm8k/nope.yaml"})
    # a base `!function` that cannot be imported and is not replaced: a clear error naming the field
    monkeypatch.setitem(sys.modules, "jieba", None)  # as if jieba were not installed
    _forget_longbench_metrics(monkeypatch)
    with pytest.raises(ImportError, match="process_results"):
        standard.standard_config({"task": "x", "base_task": "longbench/hotpotqa.yaml"})
    # replacing the field needs no import
    config = standard.standard_config({"task": "x", "base_task": "longbench/hotpotqa.yaml", "process_results": len})
    assert config["process_results"] is len and config["doc_to_text"].startswith("Answer the question")
