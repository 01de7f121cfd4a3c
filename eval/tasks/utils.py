"""Helpers for the local lm-eval tasks in this folder (`gsm8k_local`, `hotpotqa_local`).

lm-eval loads this file by path (`!function utils.xxx` in the YAMLs), so data paths are
resolved relative to this file, never to the working directory, and nothing is downloaded.
Environment variables override the data files:

- `DLLM_CACHE_GSM8K_FILE`     jsonl with `question`, `answer` (answer ends in `#### <number>`)
- `DLLM_CACHE_HOTPOTQA_FILE`  jsonl with `context`, `question`, `answer` (a string or a list of
                              accepted strings)
"""

from __future__ import annotations

import gzip
import json
import os
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GSM8K_FILE = DATA_DIR / "gsm8k" / "test.jsonl"
HOTPOTQA_FILE = DATA_DIR / "hotpotqa_synth" / "test.jsonl.gz"
GSM8K_ENV = "DLLM_CACHE_GSM8K_FILE"
HOTPOTQA_ENV = "DLLM_CACHE_HOTPOTQA_FILE"


# ----------------------------------------------------------------------------- data loading
def _resolve(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env) or default).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} not found. Set {env}=/path/to/test.jsonl, "
            f"or put the file at the default location {default}."
        )
    return path


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read a jsonl file, checking that every record has the `required` fields."""
    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
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


def _as_splits(rows: list[dict[str, Any]], keep: tuple[str, ...]) -> dict[str, Any]:
    import datasets  # imported lazily: only needed when lm-eval builds the task

    return {"test": datasets.Dataset.from_list([{k: row[k] for k in keep} for row in rows])}


def load_gsm8k(**_: Any) -> dict[str, Any]:
    """`custom_dataset` for gsm8k_local: {"test": Dataset(question, answer)}.

    lm-eval passes the task metadata (model args included) as keyword arguments; they are unused.
    """
    return _as_splits(read_jsonl(_resolve(GSM8K_ENV, GSM8K_FILE), ("question", "answer")), ("question", "answer"))


def load_hotpotqa(**_: Any) -> dict[str, Any]:
    """`custom_dataset` for hotpotqa_local: {"test": Dataset(context, question, answers)}.

    `answers` is always a list of accepted strings (a plain `answer` string becomes a 1-list).
    """
    rows = read_jsonl(_resolve(HOTPOTQA_ENV, HOTPOTQA_FILE), ("context", "question", "answer"))
    out = []
    for row in rows:
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        out.append({"context": row["context"], "question": row["question"], "answers": [str(a) for a in answers]})
    return _as_splits(out, ("context", "question", "answers"))


# ----------------------------------------------------------------------------- GSM8K scoring
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: no `$`, no thousands commas, no trailing `.`/zeros.

    "1,000" -> "1000", "$18.00" -> "18", "-3.50" -> "-3.5", "7." -> "7". Non-numbers are
    returned stripped and lower-cased so that they can still be compared.
    """
    s = text.strip().replace("$", "").replace(",", "").rstrip(".").strip()
    try:
        value = float(s)
    except ValueError:
        return s.lower()
    if value == int(value):
        return str(int(value))
    return f"{value:.10g}"


def extract_gsm8k_answer(text: str) -> str | None:
    """The model's final answer: the first number after `####` if there is one, else the last
    number in the text; None when the text holds no number."""
    if "####" in text:
        after = _NUMBER.search(text.split("####", 1)[1])
        if after:
            return normalize_number(after.group(0))
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_target(doc: dict[str, Any]) -> str:
    """Gold number of a GSM8K record (the text after `####`)."""
    return normalize_number(doc["answer"].split("####")[-1])


def gsm8k_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    pred = extract_gsm8k_answer(results[0])
    return {"exact_match": float(pred is not None and pred == gsm8k_target(doc))}


# ----------------------------------------------------------------------------- QA scoring
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower-case, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between the normalised prediction and gold answer."""
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_toks), common / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def qa_answer_line(text: str) -> str:
    """The answer part of a generation: its first non-empty line."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def hotpotqa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    pred = qa_answer_line(results[0])
    golds = doc["answers"]
    return {
        "exact_match": max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds),
        "f1": max(token_f1(pred, g) for g in golds),
    }


def hotpotqa_target(doc: dict[str, Any]) -> str:
    return doc["answers"][0]
