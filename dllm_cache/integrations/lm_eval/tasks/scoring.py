"""Scores of the local lm-eval tasks (`process_results: !function scoring.*`).

Each scorer follows a published evaluation so that numbers compare with it:
- `hotpotqa_results`: HotpotQA's official script (hotpot_evaluate_v1.py): SQuAD normalisation,
  exact match, and token F1 that is 0 when either side is yes/no/noanswer and they differ.
- `longbench_qa_f1_results`: LongBench's `qa_f1_score` as lm-eval's longbench tasks report it
  (metrics `score` and `qa_f1_score`, max over the gold answers, prediction stripped).
- `arith_synth_results`: the number after `####`, as the project's synthetic set is trained.
- `hotpotqa_synth_results`: exact match / token F1 on the text after `####` (or the first line).
lm-eval loads this file by path: it imports nothing from the rest of the repo.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


# ----------------------------------------------------------------------------- normalisation
def normalize_answer(text: str) -> str:
    """SQuAD / HotpotQA / LongBench normalisation: lower-case, drop punctuation, drop articles,
    squeeze whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """F1 of two token lists; 0 when nothing is shared (so also when either is empty)."""
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def normalize_number(text: str) -> str:
    """Canonical numeric answer: "1,000" -> "1000", "$18.00" -> "18", "7." -> "7"; a non-number
    comes back stripped and lower-cased."""
    s = text.strip().replace("$", "").replace(",", "").rstrip(".").strip()
    try:
        value = float(s)
    except ValueError:
        return s.lower()
    return str(int(value)) if value == int(value) else f"{value:.10g}"


def after_hashes(text: str) -> str | None:
    """The text after the first `####`, stripped; None when there is none."""
    return text.split("####", 1)[1].strip() if "####" in text else None


def first_line(text: str) -> str:
    """The first non-empty line, stripped (a generation may start with a newline)."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


# ----------------------------------------------------------------------------- HotpotQA (official)
def hotpotqa_em(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def hotpotqa_f1(prediction: str, gold: str) -> float:
    """HotpotQA's answer F1: a yes/no/noanswer answer on either side scores only when equal."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if pred != ref and (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")):
        return 0.0
    return _token_f1(pred.split(), ref.split())


def hotpotqa_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match and F1 of the answer line (first non-empty line) against the gold answers."""
    pred = first_line(results[0])
    return {
        "exact_match": max(hotpotqa_em(pred, g) for g in doc["answers"]),
        "f1": max(hotpotqa_f1(pred, g) for g in doc["answers"]),
    }


# ----------------------------------------------------------------------------- LongBench
def qa_f1(prediction: str, gold: str) -> float:
    """LongBench's qa_f1_score: token F1 after normalisation, no yes/no rule."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def longbench_qa_f1_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """As lm-eval's longbench `get_qa_f1_with_score`: max over gold answers of qa_f1."""
    pred = results[0].strip()
    best = max([qa_f1(pred, g) for g in doc["answers"]] + [0.0])
    return {"score": best, "qa_f1_score": best}


# ----------------------------------------------------------------------------- synthetic sets
def arith_synth_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the first number after `####` in the output against the gold's."""
    gold = normalize_number(after_hashes(doc["answer"]) or doc["answer"])
    tail = after_hashes(results[0])
    match = _NUMBER.search(tail) if tail is not None else None
    return {"exact_match": float(match is not None and normalize_number(match.group(0)) == gold)}


def synth_answer(text: str) -> str:
    """The answer part of a synthetic HotpotQA text: after `####` when present, else the first line."""
    tail = after_hashes(text)
    return first_line(tail) if tail is not None else first_line(text)


def hotpotqa_synth_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    pred = synth_answer(results[0])
    golds = [synth_answer(g) for g in doc["answers"]]
    return {
        "exact_match": max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds),
        "f1": max(_token_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds),
    }


def first_answer(doc: dict[str, Any]) -> str:
    """doc_to_target of the QA tasks: the first gold answer."""
    return doc["answers"][0]
