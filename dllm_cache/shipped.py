"""The model and task shipped with the package: the defaults of `dllm-cache generate`.

A wheel installs the folder eval/tiny/model as `dllm_cache/default_model` and
eval/data/arith_synth as `dllm_cache/default_data` (pyproject package-dir); a source checkout
(editable install, PYTHONPATH=.) reads them in place. Prompt and answer check are those of the
arithmetic task the model was trained on (eval/tiny/tasks.py): "Question: {q}\\nAnswer:", and
the answer is the number after "####".
"""

from __future__ import annotations

import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _first_existing(what: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"The shipped {what} is missing (looked in {', '.join(str(c) for c in candidates)}). "
        "Reinstall dllm-cache (`pip install .` from a checkout ships it), or pass your own."
    )


def default_model_dir() -> Path:
    """Folder of the shipped small trained LLaDA (config, tokenizer, safetensors)."""
    return _first_existing("model", _PACKAGE / "default_model", _CHECKOUT / "eval" / "tiny" / "model")


def default_prompts_file() -> Path:
    """Held-out arithmetic problems, one JSON object per line: {"question", "answer"}."""
    return _first_existing(
        "prompt file",
        _PACKAGE / "default_data" / "test.jsonl",
        _CHECKOUT / "eval" / "data" / "arith_synth" / "test.jsonl",
    )


def arith_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def final_number(text: str) -> str | None:
    """The number after '####' (or else the last number) in `text`, without leading zeros."""
    if "####" in text:
        m = re.search(r"-?\d+", text.split("####", 1)[1])
        if m:
            return m.group(0).lstrip("0") or "0"
    found = re.findall(r"-?\d+", text)
    return (found[-1].lstrip("0") or "0") if found else None


def is_correct(generated: str, answer: str) -> bool:
    """The generated final number equals the reference's."""
    pred = final_number(generated)
    return pred is not None and pred == final_number(answer)
