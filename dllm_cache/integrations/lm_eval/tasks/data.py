"""Local data for the lm-eval tasks in this folder (`custom_dataset: !function data.load_*`).

lm-eval loads this file by path, so data files are never looked up from the working directory,
and nothing is downloaded. lm-eval calls a loader with the task metadata as keyword arguments
(model args and `--metadata '{...}'` included); loaders take what they use.

Where a data file is found, first match wins (`data_file`):
1. its own environment variable (below), when set: that file and nothing else;
2. `$DLLM_CACHE_DATA_DIR/<dataset>/<file>` (`dllm-cache eval --data-dir DIR` sets it);
3. the copy shipped with the package: the GSM8K test split (750 KB, MIT) and the arithmetic set
   of the shipped model; the rest (GSM8K train 4 MB, HotpotQA 4 MB, synthetic HotpotQA) is not
   shipped, to keep the wheel small;
4. a source checkout's `eval/data/<dataset>/<file>`, beside the package.
A missing file is an error that names `--data-dir` and the variable.

Environment variables that point a task at another file of the same format:

- `DLLM_CACHE_GSM8K_FILE`, `DLLM_CACHE_GSM8K_TRAIN_FILE`  GSM8K test / train jsonl (question, answer)
- `DLLM_CACHE_HOTPOTQA_FILE`        real HotpotQA jsonl (_id, question, answer, context=[[title, [sentences]]])
- `DLLM_CACHE_HOTPOTQA_SYNTH_FILE`  synthetic HotpotQA jsonl or jsonl.gz (context, question, answer)
- `DLLM_CACHE_ARITH_SYNTH_FILE`     synthetic arithmetic jsonl or jsonl.gz (question, answer)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "DLLM_CACHE_DATA_DIR"
_PACKAGE = Path(__file__).resolve().parents[3]  # dllm_cache/ (this file: dllm_cache/integrations/lm_eval/tasks/)
CHECKOUT_DATA = _PACKAGE.parent / "eval" / "data"  # present in a source checkout only
# Data files by their path under a data folder.
GSM8K_TEST = "gsm8k/test.jsonl"
GSM8K_TRAIN = "gsm8k/train.jsonl"
HOTPOTQA_FILE = "hotpotqa/distractor_600.jsonl"
HOTPOTQA_SYNTH = "hotpotqa_synth/test.jsonl"
ARITH_SYNTH = "arith_synth/test.jsonl"
# The files a wheel installs (pyproject package-dir: eval/data/gsm8k -> lm_eval/gsm8k_data,
# eval/data/arith_synth -> dllm_cache/default_data, which also feeds `dllm-cache generate`).
SHIPPED = {
    GSM8K_TEST: _PACKAGE / "integrations" / "lm_eval" / "gsm8k_data" / "test.jsonl",
    ARITH_SYNTH: _PACKAGE / "default_data" / "test.jsonl",
}

# hotpotqa_long: contexts padded to about this many words. LongBench measures length in words;
# ~3,000 English words are ~4,000 tokens under LLaMA/Qwen-style BPE tokenizers (~1.3 tokens a
# word), the prompt length of the dLLM-Cache paper's HotpotQA setting.
LONG_CONTEXT_WORDS = 3000


# ----------------------------------------------------------------------------- files
def _with_gz(path: Path) -> list[Path]:
    """`name.jsonl` also matches `name.jsonl.gz`."""
    return [path] if path.suffix == ".gz" else [path, path.with_name(path.name + ".gz")]


def data_file(env: str, relative: str) -> Path:
    """The data file `relative` (e.g. "gsm8k/train.jsonl"): $env, else $DLLM_CACHE_DATA_DIR/relative,
    else the shipped copy, else the checkout's eval/data/relative (each also as .jsonl.gz)."""
    if os.environ.get(env):
        places = [Path(os.environ[env]).expanduser()]
    else:
        places = [Path(d).expanduser() / relative for d in (os.environ.get(DATA_DIR_ENV),) if d]
        places += [p for p in (SHIPPED.get(relative), CHECKOUT_DATA / relative if CHECKOUT_DATA.is_dir() else None)
                   if p is not None]
    candidates = [c for p in places for c in _with_gz(p)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = "" if relative in SHIPPED else " It is not shipped with the package."
    raise FileNotFoundError(
        f"data file {relative} not found (looked for {', '.join(map(str, candidates)) or 'it in no folder: none given'})."
        f"{shipped} Pass "
        f"`dllm-cache eval --data-dir DIR` (or set {DATA_DIR_ENV}=DIR) with the file at DIR/{relative} "
        f"(or .jsonl.gz), or set {env}=/path/to/file.jsonl."
    )


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records of a .jsonl or .jsonl.gz file, checking that each has the `required` fields."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: record lacks field(s) {missing}; expected {list(required)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no records")
    return rows


def _dataset(rows: list[dict[str, Any]]):
    import datasets  # lazily: only needed when lm-eval builds the task

    return datasets.Dataset.from_list(rows)


# ----------------------------------------------------------------------------- GSM8K
def load_gsm8k(**_: Any) -> dict[str, Any]:
    """{"train", "test"} of GSM8K (question, answer), in the files' order: the order of the
    Hugging Face `openai/gsm8k` splits, so lm-eval's seeded few-shot sampler picks the same
    examples as the standard task."""
    fields = ("question", "answer")
    return {
        split: _dataset([{k: r[k] for k in fields} for r in read_jsonl(data_file(env, path), fields)])
        for split, env, path in (
            ("train", "DLLM_CACHE_GSM8K_TRAIN_FILE", GSM8K_TRAIN),
            ("test", "DLLM_CACHE_GSM8K_FILE", GSM8K_TEST),
        )
    }


def load_arith_synth(**_: Any) -> dict[str, Any]:
    """{"test"} of the project's synthetic arithmetic set (question, answer ending in `#### n`)."""
    fields = ("question", "answer")
    rows = read_jsonl(data_file("DLLM_CACHE_ARITH_SYNTH_FILE", ARITH_SYNTH), fields)
    return {"test": _dataset([{k: r[k] for k in fields} for r in rows])}


# ----------------------------------------------------------------------------- HotpotQA
def passages(paragraphs: list[tuple[str, str]]) -> str:
    """LongBench's multi-document layout: "Passage 1:\\n<title>\\n<text>\\nPassage 2:\\n..."."""
    return "\n".join(f"Passage {i}:\n{title}\n{text}" for i, (title, text) in enumerate(paragraphs, 1))


def _paragraphs(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, text) of a HotpotQA record's context; sentences carry their own leading spaces."""
    return [(str(title), "".join(sentences).strip()) for title, sentences in record["context"]]


def _words(paragraph: tuple[str, str]) -> int:
    return len(paragraph[0].split()) + len(paragraph[1].split())


def _hotpotqa_records() -> list[dict[str, Any]]:
    path = data_file("DLLM_CACHE_HOTPOTQA_FILE", HOTPOTQA_FILE)
    rows = read_jsonl(path, ("_id", "question", "answer", "context"))
    for row in rows:
        if not isinstance(row["context"], list):
            raise ValueError(f"{path}: record {row['_id']} has a {type(row['context']).__name__} context; "
                             "expected HotpotQA's list of [title, [sentences]]")
    return rows


def _doc(record: dict[str, Any], paragraphs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "_id": record["_id"],
        "question": record["question"],
        "answers": [str(record["answer"])],
        "type": record.get("type", ""),
        "level": record.get("level", ""),
        "context": passages(paragraphs),
    }


def load_hotpotqa(**_: Any) -> dict[str, Any]:
    """{"test"} of real HotpotQA, distractor setting: each context is the question's own 10
    paragraphs (2 gold, 8 distractors) in the dataset's order."""
    return {"test": _dataset([_doc(r, _paragraphs(r)) for r in _hotpotqa_records()])}


def pad_paragraphs(
    own: list[tuple[str, str]], pool: list[tuple[str, str]], words: int, seed: str
) -> list[tuple[str, str]]:
    """`own` plus paragraphs drawn from `pool` (other titles only) until the total reaches
    `words` words, all shuffled: the question's gold paragraphs land anywhere in a long context,
    as in LongBench. Deterministic in `seed`."""
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    titles = {title for title, _ in own}
    chosen, total, tried = list(own), sum(map(_words, own)), set()
    while total < words and len(tried) < len(pool):
        index = rng.randrange(len(pool))
        if index in tried:
            continue
        tried.add(index)
        if pool[index][0] not in titles:
            titles.add(pool[index][0])
            chosen.append(pool[index])
            total += _words(pool[index])
    rng.shuffle(chosen)
    return chosen


def load_hotpotqa_long(context_words: int | str = LONG_CONTEXT_WORDS, **_: Any) -> dict[str, Any]:
    """{"test"} of real HotpotQA with each context padded to ~`context_words` words (~4k tokens)
    by other questions' paragraphs (LongBench-style); `--metadata '{"context_words": N}'` sets N."""
    words = int(context_words)
    if words < 1:
        raise ValueError(f"context_words={context_words!r}: expected a positive number of words")
    records = _hotpotqa_records()
    pool, seen = [], set()
    for record in records:
        for paragraph in _paragraphs(record):
            if paragraph[0] not in seen:
                seen.add(paragraph[0])
                pool.append(paragraph)
    docs = [_doc(r, pad_paragraphs(_paragraphs(r), pool, words, r["_id"])) for r in records]
    return {"test": _dataset(docs)}


def load_hotpotqa_synth(**_: Any) -> dict[str, Any]:
    """{"test"} of the project's synthetic HotpotQA-style set (context, question, answers);
    `answer` may be a string or a list of accepted strings, and may end in `#### <answer>`."""
    path = data_file("DLLM_CACHE_HOTPOTQA_SYNTH_FILE", HOTPOTQA_SYNTH)
    docs = []
    for row in read_jsonl(path, ("context", "question", "answer")):
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        docs.append({"context": row["context"], "question": row["question"], "answers": [str(a) for a in answers]})
    return {"test": _dataset(docs)}
