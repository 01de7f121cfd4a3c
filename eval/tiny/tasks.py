"""Synthetic tasks for the small LLaDA-architecture model: GSM8K-style arithmetic and
HotpotQA-style multi-hop QA over long contexts.

Everything is generated from seeded `random.Random` streams, so the same split and index always
give the same example; the vocabulary is closed (fixed word lists), which lets
`eval.tiny.tokenizer` build a small word-level tokenizer from the lists and a sample.

Splits use different seed streams (``"<family>/<split>/<seed>/<index>"``) and the training
stream additionally drops any example whose prompt text equals a test prompt (see
`TestPromptFilter`).

Prompts match the local lm-eval tasks in ``eval/tasks/`` (``gsm8k_local``, ``hotpotqa_local``):

- arith:  ``"Question: {question}\\nAnswer:"`` -> ``" {answer}"`` (answer ends in ``#### <n>``)
- hotpot: ``HOTPOT_INSTRUCTION + "\\n\\n{context}\\n\\nQuestion: {question}\\nAnswer:"`` -> ``" {answer}"``

Write the held-out test files with ``python -m eval.tiny.tasks --write``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
from collections.abc import Iterator
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ARITH_DIR = DATA_DIR / "arith_synth"
HOTPOT_DIR = DATA_DIR / "hotpotqa_synth"

TRAIN_SEED = 1234
TEST_SEED = 20240531
N_TEST = 200
# Test contexts are kept between these sizes in tokens of `eval.tiny.tokenizer`.
TEST_CONTEXT_TOKENS = (1000, 2000)

HOTPOT_INSTRUCTION = "Answer the question based on the given passages. Only give me the answer and do not output any other words."

# One regex splits text into the tokenizer's pieces: a word, a single digit, a run of '#', or a
# single other symbol, each optionally carrying the space in front of it; newlines are pieces of
# their own. `eval.tiny.tokenizer` uses the same pattern (with "▁" standing for the space).
SPACE = "\u2581"
PIECE_PATTERN = rf"{SPACE}?[A-Za-z]+|{SPACE}?[0-9]|{SPACE}?#+|{SPACE}?[^A-Za-z0-9#{SPACE}\n]|\n|{SPACE}"
_PIECE_RE = re.compile(PIECE_PATTERN)


def pieces(text: str) -> list[str]:
    """The tokenizer's pieces of `text` (spaces shown as "▁"), computed in pure Python."""
    return _PIECE_RE.findall(text.replace(" ", SPACE))


def count_tokens(text: str) -> int:
    return len(pieces(text))


# ----------------------------------------------------------------------------- word lists
ARITH_PEOPLE = [
    ("Mia", "she"),
    ("Sam", "he"),
    ("Leo", "he"),
    ("Emma", "she"),
    ("Noah", "he"),
    ("Ava", "she"),
    ("Liam", "he"),
    ("Zoe", "she"),
    ("Omar", "he"),
    ("Lily", "she"),
    ("Ben", "he"),
    ("Nora", "she"),
    ("Jack", "he"),
    ("Ella", "she"),
    ("Ravi", "he"),
    ("Grace", "she"),
    ("Tom", "he"),
    ("Ruby", "she"),
    ("Max", "he"),
    ("Chloe", "she"),
    ("Ivan", "he"),
    ("Sara", "she"),
    ("Luke", "he"),
    ("Anna", "she"),
    ("Finn", "he"),
    ("Maya", "she"),
    ("Kai", "he"),
    ("Lucy", "she"),
    ("Eli", "he"),
    ("Hana", "she"),
]
ARITH_OBJECTS = [
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "cookies",
    "books",
    "coins",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "crayons",
    "beads",
    "buttons",
    "candies",
    "eggs",
    "flowers",
    "rocks",
    "toys",
    "cupcakes",
    "oranges",
    "lemons",
    "feathers",
    "ribbons",
    "puzzles",
    "erasers",
]
# (noun, place, add sentence, remove sentence); {n} is the amount.
ARITH_SCENES = [
    ("birds", "on the tree", "{n} more birds land on the tree.", "{n} birds fly away."),
    ("people", "on the bus", "At the next stop {n} people get on.", "At the next stop {n} people get off."),
    ("cars", "in the parking lot", "{n} more cars park there.", "{n} cars drive away."),
    ("fish", "in the pond", "{n} fish are added to the pond.", "{n} fish are taken out of the pond."),
    ("books", "on the shelf", "{n} books are put on the shelf.", "{n} books are taken from the shelf."),
    ("ducks", "in the lake", "{n} more ducks swim over.", "{n} ducks leave the lake."),
    ("chairs", "in the hall", "{n} more chairs are carried in.", "{n} chairs are carried out."),
]
THEN = ["Then", "After that", "Later", "Next"]
GAIN = [
    "{s} buys {n} more.",
    "{s} finds {n} more.",
    "{s} gets {n} more from {o}.",
    "{o} gives {p} {n} more.",
    "{s} picks up {n} more.",
    "{s} wins {n} more.",
]
LOSE = ["{s} gives {n} to {o}.", "{s} loses {n}.", "{s} sells {n}.", "{s} uses {n}.", "{s} gives away {n}."]
MUL = {
    2: ["{s} doubles the number of {obj}.", "{s} ends up with twice as many {obj}."],
    3: ["{s} triples the number of {obj}.", "{s} ends up with three times as many {obj}."],
}


def _syllable_names(rng: random.Random, count: int, taken: set[str], syllables: tuple[int, int], endings: list[str]) -> list[str]:
    onsets = [
        "b",
        "br",
        "c",
        "d",
        "dr",
        "f",
        "g",
        "gr",
        "h",
        "j",
        "k",
        "kr",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "st",
        "t",
        "tr",
        "v",
        "z",
        "th",
        "sh",
        "qu",
        "w",
        "y",
    ]
    vowels = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "ei", "y"]
    names: list[str] = []
    while len(names) < count:
        n = rng.randint(*syllables)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(n)) + rng.choice(endings)
        word = word.capitalize()
        if word not in taken and 4 <= len(word) <= 10:
            taken.add(word)
            names.append(word)
    return names


def _entity_lists() -> dict[str, list[str]]:
    rng = random.Random("eval.tiny.tasks/entities/v1")
    taken = {w.capitalize() for w in string.ascii_letters}
    taken |= {name for name, _ in ARITH_PEOPLE}
    return {
        "countries": _syllable_names(rng, 40, taken, (2, 2), ["ria", "land", "stan", "ia", "or", "ane"]),
        "cities": _syllable_names(rng, 200, taken, (1, 2), ["n", "r", "l", "s", "th", "m", "k", "", "x"]),
        "rivers": _syllable_names(rng, 60, taken, (1, 2), ["ss", "nd", "sk", "rn", "lt"]),
        "people": _syllable_names(rng, 400, taken, (2, 2), ["n", "r", "l", "s", "", "", "ra", "na"]),
    }


ENTITIES = _entity_lists()
OCCUPATIONS = [
    "painter",
    "poet",
    "chemist",
    "singer",
    "farmer",
    "sailor",
    "teacher",
    "doctor",
    "writer",
    "baker",
    "pilot",
    "judge",
    "dancer",
    "builder",
    "architect",
    "composer",
    "engineer",
    "historian",
    "actor",
    "merchant",
]
TOPICS = [
    "bridges",
    "birds",
    "old maps",
    "glass",
    "music",
    "rivers",
    "stars",
    "trains",
    "coins",
    "gardens",
    "ships",
    "clocks",
    "poems",
    "salt",
    "silk",
    "paper",
    "wine",
    "tea",
]
PRODUCTS = [
    "glass",
    "silk",
    "olives",
    "clocks",
    "cheese",
    "paper",
    "wool",
    "pottery",
    "bread",
    "boats",
    "carpets",
    "honey",
    "salt",
    "lamps",
    "tea",
    "copper",
]
CITY_KINDS = ["city", "town", "port city", "small town", "large city", "market town"]
REGIONS = ["north", "south", "east", "west", "center"]


# ----------------------------------------------------------------------------- arithmetic
def make_arith(rng: random.Random, n_ops: int | None = None) -> dict[str, str]:
    """A GSM8K-style word problem with 2-4 arithmetic steps, every value in 0..99.

    Returns {"question", "answer"}; the answer shows each step ("a + b = c.") then "#### c".
    """
    n_ops = n_ops or rng.randint(2, 4)
    if rng.random() < 0.65:
        return _arith_person(rng, n_ops)
    return _arith_scene(rng, n_ops)


def _add_amount(rng: random.Random, value: int) -> int | None:
    return rng.randint(1, min(30, 99 - value)) if value < 99 else None


def _sub_amount(rng: random.Random, value: int) -> int | None:
    return rng.randint(1, min(30, value - 1)) if value > 1 else None


def _divisor(rng: random.Random, value: int) -> int | None:
    options = [k for k in range(2, 7) if value % k == 0 and value // k >= 1]
    return rng.choice(options) if options else None


def _arith_person(rng: random.Random, n_ops: int) -> dict[str, str]:
    (name, pron), (other, _) = rng.sample(ARITH_PEOPLE, 2)
    obj = rng.choice(ARITH_OBJECTS)
    obj_pron = "her" if pron == "she" else "him"
    value = rng.randint(2, 40)
    sentences = [f"{name} has {value} {obj}."]
    steps: list[str] = []
    question = rng.choice(
        [
            f"How many {obj} does {name} have now?",
            f"How many {obj} does {name} have in the end?",
            f"How many {obj} does {pron} have now?",
        ]
    )
    ops_left = n_ops
    while ops_left > 0:
        subject = pron.capitalize() if rng.random() < 0.6 else name
        if len(sentences) > 1 and rng.random() < 0.4:
            subject = f"{rng.choice(THEN)} {subject.lower() if subject == pron.capitalize() else subject}"
        kind = rng.choice(["gain", "gain", "lose", "lose", "mul", "packs", "div"])
        if kind == "div" and ops_left == 1 and (k := _divisor(rng, value)):
            sentences.append(f"{subject} shares them equally among {k} friends.")
            question = f"How many {obj} does each friend get?"
            steps.append(f"{value} / {k} = {value // k}.")
            value //= k
        elif kind == "packs" and ops_left >= 2:
            k, m = rng.randint(2, 5), rng.randint(2, 9)
            if value + k * m > 99:
                continue
            container = rng.choice(["bags", "boxes", "packs", "jars"])
            sentences.append(f"{subject} buys {k} {container} with {m} {obj} in each.")
            steps.append(f"{k} * {m} = {k * m}.")
            steps.append(f"{value} + {k * m} = {value + k * m}.")
            value += k * m
            ops_left -= 1
        elif kind == "mul" and value * 2 <= 99:
            k = 3 if value * 3 <= 99 and rng.random() < 0.4 else 2
            sentences.append(rng.choice(MUL[k]).format(s=subject, obj=obj))
            steps.append(f"{value} * {k} = {value * k}.")
            value *= k
        elif kind == "lose" and (n := _sub_amount(rng, value)):
            sentences.append(rng.choice(LOSE).format(s=subject, n=n, o=other))
            steps.append(f"{value} - {n} = {value - n}.")
            value -= n
        elif kind in ("gain", "mul", "packs", "div") and (n := _add_amount(rng, value)):
            template = rng.choice(GAIN)
            if template.startswith("{o}"):
                sentences.append(template.format(o=other, p=obj_pron, n=n))
            else:
                sentences.append(template.format(s=subject, n=n, o=other))
            steps.append(f"{value} + {n} = {value + n}.")
            value += n
        else:
            continue
        ops_left -= 1
    return {"question": " ".join(sentences + [question]), "answer": " ".join(steps) + f"\n#### {value}"}


def _arith_scene(rng: random.Random, n_ops: int) -> dict[str, str]:
    noun, place, add, remove = rng.choice(ARITH_SCENES)
    value = rng.randint(5, 50)
    sentences = [f"There are {value} {noun} {place}."]
    steps: list[str] = []
    question = f"How many {noun} are {place} now?"
    ops_left = n_ops
    while ops_left > 0:
        kind = rng.choice(["add", "add", "sub", "sub", "mul", "div"])
        prefix = f"{rng.choice(THEN)} " if rng.random() < 0.4 else ""
        if kind == "div" and ops_left == 1 and (k := _divisor(rng, value)):
            sentences.append(f"{prefix}the {noun} are split equally into {k} groups.")
            question = f"How many {noun} are in each group?"
            steps.append(f"{value} / {k} = {value // k}.")
            value //= k
        elif kind == "mul" and value * 2 <= 99:
            sentences.append(f"{prefix}the number of {noun} {place} doubles.")
            steps.append(f"{value} * 2 = {value * 2}.")
            value *= 2
        elif kind == "sub" and (n := _sub_amount(rng, value)):
            sentences.append(prefix + remove.format(n=n))
            steps.append(f"{value} - {n} = {value - n}.")
            value -= n
        elif kind in ("add", "mul", "div") and (n := _add_amount(rng, value)):
            sentences.append(prefix + add.format(n=n))
            steps.append(f"{value} + {n} = {value + n}.")
            value += n
        else:
            continue
        ops_left -= 1
    sentences = [s[0].upper() + s[1:] for s in sentences]
    return {"question": " ".join(sentences + [question]), "answer": " ".join(steps) + f"\n#### {value}"}


# ----------------------------------------------------------------------------- multi-hop QA
def _city_paragraph(rng: random.Random, city: str, country: str, river: str, force_river: bool) -> str:
    first = rng.choice(
        [
            f"{city} is a {rng.choice(CITY_KINDS)} in {country}.",
            f"{city} is a {rng.choice(CITY_KINDS)} in the {rng.choice(REGIONS)} of {country}.",
        ]
    )
    extra = [
        f"It was founded in {rng.randint(900, 1900)}.",
        f"About {rng.randint(2, 900)} thousand people live there.",
        f"The {rng.choice(['city', 'town'])} is known for its {rng.choice(PRODUCTS)}.",
        f"It has {rng.randint(2, 40)} bridges and {rng.randint(2, 60)} parks.",
        f"Its market opens every {rng.choice(['Monday', 'Tuesday', 'Friday', 'Saturday', 'Sunday'])}.",
    ]
    rng.shuffle(extra)
    body = [first] + extra[: rng.randint(1, 4)]
    if force_river or rng.random() < 0.6:
        body.insert(rng.randint(1, len(body)), f"It lies on the {river} river.")
    return " ".join(body)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _person_paragraph(rng: random.Random, person: str, city: str, year: int, cities: list[str]) -> str:
    birth = rng.choice(
        [
            f"{person} was born in {city} in {year}.",
            f"{person} was born in {year} in the {rng.choice(['city', 'town'])} of {city}.",
        ]
    )
    extra = [
        f"{person} is known for work on {rng.choice(TOPICS)}.",
        f"{person} has {rng.randint(0, 6)} children.",
        f"In {year + rng.randint(18, 50)} {person} won a prize for a study of {rng.choice(TOPICS)}.",
        f"Later {person} moved to {rng.choice([c for c in cities if c != city])} and worked as {_a(rng.choice(OCCUPATIONS))}.",
    ]
    rng.shuffle(extra)
    body = [f"{person} is {_a(rng.choice(OCCUPATIONS))}.", birth] + extra[: rng.randint(1, 3)]
    return " ".join(body)


def make_hotpot(rng: random.Random, n_distractors: int) -> dict[str, str]:
    """A two-hop question over `n_distractors + 2` short paragraphs (two gold, rest distractors).

    Kinds: bridge person -> birthplace city -> country ("In which country was X born?"),
    bridge person -> city -> river, and comparison of two people's birth years.
    Every answer is one word from a closed list. Returns {"context", "question", "answer", "kind"}.
    """
    n_distractors = max(0, n_distractors)
    countries = ENTITIES["countries"]
    cities = rng.sample(ENTITIES["cities"], min(len(ENTITIES["cities"]), n_distractors + 8))
    people = rng.sample(ENTITIES["people"], min(len(ENTITIES["people"]), n_distractors + 4))
    rivers = ENTITIES["rivers"]
    city_country = {c: rng.choice(countries) for c in cities}
    city_river = {c: rng.choice(rivers) for c in cities}
    years = rng.sample(range(1800, 2000), len(people))
    birth = {p: rng.choice(cities) for p in people}
    born = dict(zip(people, years))

    roll = rng.random()
    kind = "bridge_country" if roll < 0.5 else "bridge_river" if roll < 0.7 else "comparison"
    gold: list[str] = []
    used_people: set[str] = set()
    used_cities: set[str] = set()
    if kind == "comparison":
        a, b = people[0], people[1]
        used_people |= {a, b}
        later = rng.random() < 0.5
        word = rng.choice(["was born later", "is younger"] if later else ["was born first", "is older"])
        question = f"Who {word}, {a} or {b}?"
        answer = (a if born[a] > born[b] else b) if later else (a if born[a] < born[b] else b)
        gold += [_person_paragraph(rng, p, birth[p], born[p], cities) for p in (a, b)]
    else:
        person = people[0]
        city = birth[person]
        used_people.add(person)
        used_cities.add(city)
        if kind == "bridge_country":
            question = rng.choice(
                [
                    f"In which country was {person} born?",
                    f"{person} was born in a city of which country?",
                    f"Which country is the birthplace of {person} in?",
                ]
            )
            answer = city_country[city]
        else:
            question = rng.choice(
                [
                    f"Which river flows through the city where {person} was born?",
                    f"On which river lies the birthplace of {person}?",
                ]
            )
            answer = city_river[city]
        gold.append(_person_paragraph(rng, person, city, born[person], cities))
        gold.append(_city_paragraph(rng, city, city_country[city], city_river[city], kind == "bridge_river"))

    paragraphs = list(gold)
    free_people = [p for p in people if p not in used_people]
    free_cities = [c for c in cities if c not in used_cities]
    for _ in range(n_distractors):
        if free_people and (rng.random() < 0.5 or not free_cities):
            p = free_people.pop()
            paragraphs.append(_person_paragraph(rng, p, birth[p], born[p], cities))
        elif free_cities:
            c = free_cities.pop()
            paragraphs.append(_city_paragraph(rng, c, city_country[c], city_river[c], False))
    rng.shuffle(paragraphs)
    context = "\n".join(f"Paragraph {i}: {text}" for i, text in enumerate(paragraphs, 1))
    return {"context": context, "question": question, "answer": answer, "kind": kind}


# ----------------------------------------------------------------------------- prompts
def arith_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def hotpot_prompt(context: str, question: str) -> str:
    return f"{HOTPOT_INSTRUCTION}\n\n{context}\n\nQuestion: {question}\nAnswer:"


def prompt_and_target(family: str, example: dict[str, str]) -> tuple[str, str]:
    """(prompt, target) text of an example; the target starts with a space like lm-eval's."""
    if family == "arith":
        return arith_prompt(example["question"]), " " + example["answer"]
    if family == "hotpot":
        return hotpot_prompt(example["context"], example["question"]), " " + example["answer"]
    raise ValueError(f"unknown task family {family!r}; expected 'arith' or 'hotpot'")


def arith_number(text: str) -> str | None:
    """The number after '####' (or the last number) in `text`, None if there is none."""
    if "####" in text:
        m = re.search(r"-?\d+", text.split("####", 1)[1])
        if m:
            return m.group(0).lstrip("0") or "0"
    found = re.findall(r"-?\d+", text)
    return (found[-1].lstrip("0") or "0") if found else None


def is_correct(family: str, generated: str, answer: str) -> bool:
    """Exact match: the final number for arith, the first word (case-insensitive) for hotpot."""
    if family == "arith":
        pred = arith_number(generated)
        return pred is not None and pred == arith_number(answer)
    words = re.findall(r"[A-Za-z0-9]+", generated)
    return bool(words) and words[0].lower() == answer.strip().lower()


# ----------------------------------------------------------------------------- splits
def example_rng(family: str, split: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{family}/{split}/{seed}/{index}")


def hotpot_distractors_for_tokens(rng: random.Random, low: int, high: int) -> int:
    """A distractor count whose context lands roughly in [low, high] tokens (~41 tokens each)."""
    return max(0, int(rng.uniform(low, high) / 41) - 2)


def test_examples(family: str, n: int = N_TEST, seed: int = TEST_SEED) -> list[dict[str, str]]:
    """The fixed held-out set of a family (what `--write` saves; first n of the 200)."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    index = 0
    while len(out) < n:
        rng = example_rng(family, "test", seed, index)
        index += 1
        if family == "arith":
            ex = make_arith(rng)
            key = ex["question"]
        elif family == "hotpot":
            ex = make_hotpot(rng, hotpot_distractors_for_tokens(rng, *TEST_CONTEXT_TOKENS))
            if not TEST_CONTEXT_TOKENS[0] <= count_tokens(ex["context"]) <= TEST_CONTEXT_TOKENS[1]:
                continue
            key = ex["context"] + ex["question"]
        else:
            raise ValueError(f"unknown task family {family!r}; expected 'arith' or 'hotpot'")
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return out


class TestPromptFilter:
    """Set of held-out prompts; training streams drop any example that is in it."""

    def __init__(self, n: int = N_TEST):
        self.keys = {prompt_and_target("arith", ex)[0] for ex in test_examples("arith", n)}
        self.keys |= {prompt_and_target("hotpot", ex)[0] for ex in test_examples("hotpot", n)}

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.keys


def train_examples(
    family: str, seed: int = TRAIN_SEED, start: int = 0, distractors: tuple[int, int] = (1, 52)
) -> Iterator[dict[str, str]]:
    """Endless training stream (no filtering; see `TestPromptFilter`)."""
    index = start
    while True:
        rng = example_rng(family, "train", seed, index)
        index += 1
        if family == "arith":
            yield make_arith(rng)
        else:
            yield make_hotpot(rng, rng.randint(*distractors))


def vocabulary_sample(n: int = 400) -> list[str]:
    """Texts covering every word the generators can emit, for building the closed vocabulary."""
    rng = random.Random("eval.tiny.tasks/vocab")
    texts = [HOTPOT_INSTRUCTION, "Question: Answer: Paragraph #### + - * / = . , ? : ! ' \n"]
    for i in range(n):
        for p, t in (prompt_and_target("arith", make_arith(rng, 2 + i % 3)), prompt_and_target("hotpot", make_hotpot(rng, 6))):
            texts += [p, t]
    words = [w for lst in ENTITIES.values() for w in lst]
    words += [w for w, _ in ARITH_PEOPLE] + ARITH_OBJECTS + OCCUPATIONS + TOPICS + PRODUCTS
    texts.append(" ".join(words))
    return texts


# ----------------------------------------------------------------------------- files
README_TEXT = """# {title} (synthetic)

This is a SYNTHETIC data set made by this project: it is NOT {real}. The examples come from
the seeded generators in `eval/tiny/tasks.py` (family `{family}`, split seed {seed}) and are
written by

    python -m eval.tiny.tasks --write

{n} examples, one JSON object per line, fields {fields}. {details}
Training examples use a different seed stream, and any training example whose prompt equals a
test prompt is dropped. Prompt used in training: `{prompt}`.
"""


def write_test_files(n: int = N_TEST) -> list[Path]:
    written = []
    arith = test_examples("arith", n)
    hotpot = test_examples("hotpot", n)
    for folder, rows, keys in (
        (ARITH_DIR, arith, ("question", "answer")),
        (HOTPOT_DIR, hotpot, ("context", "question", "answer")),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "test.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row[k] for k in keys}, ensure_ascii=False) + "\n")
        written.append(path)
    lengths = sorted(count_tokens(r["context"]) for r in hotpot)
    kinds = {k: sum(r["kind"] == k for r in hotpot) for k in ("bridge_country", "bridge_river", "comparison")}
    (ARITH_DIR / "README.md").write_text(
        README_TEXT.format(
            title="arith_synth",
            real="GSM8K",
            family="arith",
            seed=TEST_SEED,
            n=n,
            fields="`question`, `answer`",
            details="GSM8K-style word problems with 2-4 steps (+, -, *, /), every value 0-99; the answer shows "
            "each step and ends in `#### <number>` like GSM8K.",
            prompt="Question: {question}\\nAnswer:",
        )
    )
    (HOTPOT_DIR / "README.md").write_text(
        README_TEXT.format(
            title="hotpotqa_synth",
            real="the real HotpotQA",
            family="hotpot",
            seed=TEST_SEED,
            n=n,
            fields="`context`, `question`, `answer`",
            details=f"HotpotQA-style two-hop questions about invented people, cities, countries and rivers "
            f"({kinds['bridge_country']} person->city->country, {kinds['bridge_river']} person->city->river, "
            f"{kinds['comparison']} birth-year comparisons); two gold paragraphs among distractors; contexts "
            f"{lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}) under the project's tiny "
            f"word-level tokenizer; one-word answers.",
            prompt=HOTPOT_INSTRUCTION + "\\n\\n{context}\\n\\nQuestion: {question}\\nAnswer:",
        )
    )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write eval/data/{arith,hotpotqa}_synth/test.jsonl")
    parser.add_argument("--n", type=int, default=N_TEST)
    parser.add_argument("--show", type=int, default=0, help="print this many training examples of each family")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_test_files(args.n):
            print(f"wrote {path}")
    for family in ("arith", "hotpot"):
        stream = train_examples(family)
        for _ in range(args.show):
            prompt, target = prompt_and_target(family, next(stream))
            print(f"--- {family} ({count_tokens(prompt)} + {count_tokens(target)} tokens)\n{prompt}{target}\n")


if __name__ == "__main__":
    main()
