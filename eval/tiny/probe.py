"""What a proxy model has learnt, in seconds on a CPU: single forwards with the answer masked the way
left-to-right decoding sees it (the token and everything after it), no generation.

    PYTHONPATH=. python -m eval.tiny.probe --model eval/tiny/model

- arith: each result of a held-out worked solution ("51 + 17 = 68"), masked with all that follows:
  the model must compute it, as no later restatement is visible. A model that only learnt to copy
  results scores ~0 here while filling in uniformly masked solutions almost perfectly.
- hotpot: per context size (distractor paragraphs), hop 1 (the person's city, nothing of the
  answer visible) and hop 2 (the city's country or river, given hop 1) of two-hop questions.
Why: held-out exact match only says that a long generation failed somewhere; these say where.
"""

from __future__ import annotations

import argparse
import re

import torch

from . import tasks
from .train import RESPONSE_LENGTH, arch_of


def _ids(tok, family: str, example: dict) -> tuple[list[int], list[int], torch.Tensor]:
    prompt, target = tasks.prompt_and_target(family, example)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(target, add_special_tokens=False)["input_ids"]
    return p, t, torch.tensor([p + t + [tok.eos_token_id] * (RESPONSE_LENGTH[family] - len(t))])


@torch.no_grad()
def _predict(model, ids: torch.Tensor, start: int, positions: list[int], mask_id: int) -> list[int]:
    """Argmax at `positions` with ids[start:] masked (Dream's logits at i - 1 predict token i)."""
    x = ids.clone()
    x[0, start:] = mask_id
    logits = model(x.to(model.device)).logits[0]
    if arch_of(model.config) == "dream":
        positions = [i - 1 for i in positions]
    return logits[positions].argmax(-1).tolist()


def equation_accuracy(model, tok, examples: list[dict]) -> tuple[int, int]:
    """(right, total) over every result of the examples' worked solutions."""
    right = total = 0
    for ex in examples:
        p, t, ids = _ids(tok, "arith", ex)
        pieces = tok.convert_ids_to_tokens(t)
        for i, piece in enumerate(pieces):
            if piece != "\u2581=":
                continue
            digits = [len(p) + i + 1]  # the result's digits: "▁6" then "8"
            while digits[-1] - len(p) + 1 < len(pieces) and re.fullmatch(r"[0-9]", pieces[digits[-1] - len(p) + 1]):
                digits.append(digits[-1] + 1)
            pred = _predict(model, ids, digits[0], digits, tok.mask_token_id)
            right += pred == ids[0, digits].tolist()
            total += 1
    return right, total


ENTITY_WORDS = {w for kind in ("cities", "countries", "rivers", "people") for w in tasks.ENTITIES[kind]}


def hop_accuracy(model, tok, distractors: int, n: int, seed: str = "probe") -> dict[str, tuple[int, int]]:
    """{"hop1": (right, total), "hop2": ...} over n two-hop chain questions with that many distractors."""
    out = {"hop1": [0, 0], "hop2": [0, 0]}
    i = 0
    while out["hop1"][1] < n and i < 20 * n:
        ex = tasks.make_hotpot(tasks.example_rng("hotpot", seed, distractors, i), distractors)
        i += 1
        if ex["kind"] == "comparison":
            continue
        p, t, ids = _ids(tok, "hotpot", ex)
        pieces = [s.lstrip("\u2581") for s in tok.convert_ids_to_tokens(t)]
        entities = [j for j, s in enumerate(pieces) if s in ENTITY_WORDS]  # X, C, C, K, K
        if len(entities) < 4:
            continue
        for hop, j in (("hop1", entities[1]), ("hop2", entities[3])):
            pos = len(p) + j
            out[hop][0] += _predict(model, ids, pos, [pos], tok.mask_token_id) == [ids[0, pos].item()]
            out[hop][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    from .evaluate import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="eval/tiny/model")
    ap.add_argument("--n", type=int, default=12, help="held-out arith problems; two-hop questions per context size")
    ap.add_argument("--distractors", type=int, nargs="+", default=[0, 5, 20, 60])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    model, tok = load_model(args.model, args.device, torch.float32)
    right, total = equation_accuracy(model, tok, tasks.test_examples("arith", args.n))
    print(f"arith: {right}/{total} results computed right ({right / max(1, total):.0%})")
    for d in args.distractors:
        hops = hop_accuracy(model, tok, d, args.n)
        tokens = tasks.PARAGRAPH_TOKENS * (d + 2)
        print(f"hotpot, {d} distractors (~{tokens} context tokens): " + ", ".join(f"{k} {r}/{t}" for k, (r, t) in hops.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
