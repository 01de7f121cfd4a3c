"""The long-context proxy task "kv-retrieval": one key's value among hundreds of records, 2k-3.4k-token prompts.

Why this task: dLLM-Cache's largest claimed win (HotpotQA, Kp=100) is where the prompt is thousands of
tokens and is in effect never refreshed, and the proxies cannot do the HotpotQA-style multihop task
(15-23% uncached), so nothing showed whether stale prompt features keep answers. Key-value retrieval
is the simplest task whose answer must be read from far back in a long prompt, and small models learn it.

An example (text in the closed vocabulary of `eval.tiny.tokenizer`; names are the invented one-token
people names of `eval.tiny.tasks.ENTITIES`, unique within an example; values are 4 digits, each digit
one token):

    {HOTPOT_INSTRUCTION}

    The number of Zypaen is 1850.
    The number of Stafer is 0042.
    ... (185-300 records, 11 tokens each)

    Question: Which is the number of Stafer?
    Answer:                                   -> target " The number of Stafer is 0042."

Scoring: exact match of the first number in the generation with the 4-digit value.

The held-out set is `test_examples()`: N_TEST examples from `random.Random(f"kv/test/{TEST_SEED}/{i}")`,
regenerated on demand (not committed: ~6 MB of text that the seed reproduces exactly). Training
batches are drawn on the device by `train_batch` (token ids, same layout; `render_ids` is the one
renderer both paths share, and a test checks it against the tokenizer on the text).
"""

from __future__ import annotations

import random
import re

import torch

from eval.tiny.tasks import ENTITIES, HOTPOT_INSTRUCTION, count_tokens

TASK = "kv-retrieval"  # the task's name in frontier.json
TEST_SEED = 20261203
TRAIN_SEED = 4321
N_TEST = 500
RECORDS = (185, 300)  # records per held-out prompt: 2.07k-3.34k prompt tokens
RECORD_TOKENS = 11  # "The", " number", " of", " <name>", " is", " d", "d", "d", "d", ".", "\n"
DIGITS = 4
VALUE_OFFSET = 5  # the value's first digit in the response: " The", " number", " of", " <name>", " is", digits...
GEN = {"gen_length": 16, "steps": 16, "block_length": 8}  # target 10 tokens + eos; two semi-AR blocks for LLaDA
KEYS = ENTITIES["people"]  # 400 one-token names


def record_text(key: str, value: str) -> str:
    return f"The number of {key} is {value}."


def question_text(key: str) -> str:
    return f"Which is the number of {key}?"


def prompt_of(example: dict) -> str:
    return f"{HOTPOT_INSTRUCTION}\n\n{example['context']}\n\nQuestion: {example['question']}\nAnswer:"


def target_of(example: dict) -> str:
    return " " + record_text(example["key"], example["answer"])


def make_example(rng: random.Random, n_records: int) -> dict:
    """One example with `n_records` records (unique keys) -> {"context", "question", "answer", "key",
    "keys", "values", "query"}; keys/values/query are the structure `render_ids` renders."""
    if not 1 <= n_records <= len(KEYS):
        raise ValueError(f"n_records must be in 1..{len(KEYS)} (one unique name per record), got {n_records}")
    keys = rng.sample(KEYS, n_records)
    values = ["".join(rng.choice("0123456789") for _ in range(DIGITS)) for _ in keys]
    query = rng.randrange(n_records)
    context = "\n".join(record_text(k, v) for k, v in zip(keys, values))
    return {"context": context, "question": question_text(keys[query]), "answer": values[query], "key": keys[query],
            "keys": keys, "values": values, "query": query}


def range_examples(n: int, records: tuple[int, int], seed: int) -> list[dict]:
    """n examples with record counts uniform in `records` (inclusive), example i from
    random.Random(f"kv/range/{seed}/{lo}-{hi}/{i}"): the curriculum's per-stage validation sets."""
    lo, hi = records
    out = []
    for i in range(n):
        rng = random.Random(f"kv/range/{seed}/{lo}-{hi}/{i}")
        out.append(make_example(rng, rng.randint(lo, hi)))
    return out


def test_examples(n: int = N_TEST, seed: int = TEST_SEED) -> list[dict]:
    """The held-out set: example i from random.Random(f"kv/test/{seed}/{i}"), records uniform in RECORDS."""
    out = []
    for i in range(n):
        rng = random.Random(f"kv/test/{seed}/{i}")
        out.append(make_example(rng, rng.randint(*RECORDS)))
    return out


_NUMBER = re.compile(r"\d+")


def answer_key(text: str) -> str | None:
    """The first number in a generation (what exact match compares); None if there is none."""
    m = _NUMBER.search(text)
    return m.group(0) if m else None


def is_correct(generated: str, answer: str) -> bool:
    return answer_key(generated) == answer


def prompt_tokens(example: dict) -> int:
    return count_tokens(prompt_of(example))


# ----------------------------------------------------------------------------- token ids on the device
class Vocab:
    """The ids `render_ids` needs, looked up once from the tokenizer (errors name a missing piece)."""

    def __init__(self, tok):
        v = tok.get_vocab()

        def ids(pieces: list[str]) -> list[int]:
            missing = [p for p in pieces if p not in v]
            if missing:
                raise ValueError(f"the tokenizer lacks pieces {missing}; the task needs eval.tiny.tokenizer's vocabulary")
            return [v[p] for p in pieces]

        def encode(text: str) -> list[int]:
            out = tok(text, add_special_tokens=False)["input_ids"]
            if tok.unk_token_id in out:
                raise ValueError(f"{text!r} has pieces outside the tokenizer's vocabulary")
            return out

        self.head = encode(f"{HOTPOT_INSTRUCTION}\n\n")  # instruction, blank line
        self.record = ids(["The", "\u2581number", "\u2581of"]), ids(["\u2581is"]), ids([".", "\n"])
        self.question = ids(["\n", "Question", ":", "\u2581Which", "\u2581is", "\u2581the", "\u2581number", "\u2581of"])
        self.tail = ids(["?", "\n", "Answer", ":"])
        self.answer = ids(["\u2581The", "\u2581number", "\u2581of"])
        self.key = torch.tensor(ids(["\u2581" + k for k in KEYS]))  # (n_keys,) " <name>"
        self.first_digit = torch.tensor(ids([f"\u2581{d}" for d in range(10)]))  # " d" opens a number
        self.digit = torch.tensor(ids([str(d) for d in range(10)]))
        self.eos = tok.eos_token_id
        self._on: dict[str, dict[str, torch.Tensor]] = {}

    def on(self, device) -> dict[str, torch.Tensor]:
        """The pieces as tensors on `device`, made once per device. Why: a host-to-device copy per
        training step blocks the host until the GPU's queue drains, and at small batches the steps
        are launch-bound, so every copy would idle the GPU while the next step is being launched."""
        key = str(device)
        if key not in self._on:
            pre, mid, post = self.record
            lists = {"pre": pre, "mid": mid, "post": post, "head": self.head, "question": self.question,
                     "tail": self.tail, "answer": self.answer}
            out = {k: torch.tensor(v, device=device) for k, v in lists.items()}
            out.update(key=self.key.to(device), first_digit=self.first_digit.to(device), digit=self.digit.to(device))
            self._on[key] = out
        return self._on[key]


def render_ids(vocab: Vocab, keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, gen_length: int) -> tuple:
    """Prompt and response token ids of a batch of examples with the same record count.

    keys: (B, R) indices into KEYS, unique per row; values: (B, R, DIGITS) digits 0-9; query: (B,)
    record index asked for. Returns (prompt (B, P), response (B, gen_length)): the response is the
    target followed by <|eos|> up to gen_length, as the training objective supervises it.
    """
    B, R = keys.shape
    dev = keys.device
    t = vocab.on(dev)
    key_ids = t["key"][keys]  # (B, R)
    digits = torch.cat([t["first_digit"][values[..., :1]], t["digit"][values[..., 1:]]], dim=-1)  # (B, R, 4)
    pre, mid, post = t["pre"], t["mid"], t["post"]

    def rows(x: torch.Tensor, *lead: int) -> torch.Tensor:
        return x.expand(*lead, x.shape[-1])

    records = torch.cat([rows(pre, B, R), key_ids[..., None], rows(mid, B, R), digits, rows(post, B, R)], dim=-1)  # (B, R, 11)
    head = t["head"].expand(B, -1)
    q_key = key_ids.gather(1, query[:, None])  # (B, 1)
    question = torch.cat([rows(t["question"], B), q_key, rows(t["tail"], B)], dim=1)
    prompt = torch.cat([head, records.reshape(B, R * RECORD_TOKENS), question], dim=1)  # (B, P)
    q_digits = digits.gather(1, query[:, None, None].expand(B, 1, DIGITS))[:, 0]  # (B, 4)
    target = torch.cat([rows(t["answer"], B), q_key, rows(mid, B), q_digits, rows(post[:1], B)], dim=1)  # (B, 10)
    if target.shape[1] > gen_length:
        raise ValueError(f"gen_length {gen_length} is shorter than the target ({target.shape[1]} tokens)")
    response = torch.cat([target, torch.full((B, gen_length - target.shape[1]), vocab.eos, device=dev)], dim=1)
    return prompt, response


def example_tensors(example: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The structure of a text example as render_ids takes it (batch of one)."""
    index = {k: i for i, k in enumerate(KEYS)}
    keys = torch.tensor([[index[k] for k in example["keys"]]])
    values = torch.tensor([[[int(d) for d in v] for v in example["values"]]])
    return keys, values, torch.tensor([example["query"]])


def train_batch(vocab: Vocab, generator: torch.Generator, rows: int, n_records: int, gen_length: int, device) -> torch.Tensor:
    """A random training batch (B, P + gen_length) of `n_records` records per row, drawn on `device`
    from `generator` (a torch.Generator on that device): no padding, every row the same length."""
    keys = torch.rand(rows, len(KEYS), device=device, generator=generator).argsort(1)[:, :n_records]  # unique per row
    values = torch.randint(0, 10, (rows, n_records, DIGITS), device=device, generator=generator)
    query = torch.randint(0, n_records, (rows,), device=device, generator=generator)
    prompt, response = render_ids(vocab, keys, values, query, gen_length)
    return torch.cat([prompt, response], dim=1)
