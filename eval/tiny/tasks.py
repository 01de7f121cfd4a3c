"""Proxy tasks for the small trained models: GSM8K-style word problems with worked solutions and
HotpotQA-style two-hop questions over long contexts of distractor paragraphs.

They exist so the cache's effect on answers can be measured on models trained here (no weights
can be downloaded). Both are built to behave like the real workloads where the cache cares:

- arith: 4-7 step word problems; the solution restates every step and writes its arithmetic
  ("She buys 15 more: 23 + 15 = 38. Now she has 38 apples.") and ends in ``#### <n>``; solutions are
  100-250 tokens, so generation uses GSM8K's gen 256 with semi-autoregressive blocks.
- hotpot: a question whose answer needs two facts from two different paragraphs (person ->
  birthplace city -> country or river; or two people's birth years compared), hidden among
  distractor paragraphs about other people and cities; contexts of 1k-4k tokens; the answer is one
  word, given after a one-line chain ("X was born in C. C is in K.\\n#### K"), gen 32.

Every example is a pure function of a seeded `random.Random` stream ("<family>/<split>/<seed>/<i>"),
so splits are fixed; training examples whose prompt equals a held-out prompt are dropped
(`TestPromptFilter`). The vocabulary is closed (fixed word lists) and digits are single tokens
(see `eval.tiny.tokenizer`), so arithmetic is learnable digit by digit.

Prompts (also those of the local lm-eval tasks `arith_synth` and `hotpotqa_synth`):
- arith:  ``"Question: {question}\\nAnswer:"`` -> ``" {answer}"``
- hotpot: ``HOTPOT_INSTRUCTION + "\\n\\n{context}\\n\\nQuestion: {question}\\nAnswer:"`` -> ``" {solution}"``

Write the held-out files with ``python -m eval.tiny.tasks --write``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import string
from collections.abc import Iterator
from pathlib import Path

# The arithmetic prompt and its answer check live in the library (the main job needs them
# without eval/ on the path); the proxy tasks use the same ones.
from dllm_cache.shipped import arith_prompt
from dllm_cache.shipped import final_number as arith_number

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ARITH_DIR = DATA_DIR / "arith_synth"
HOTPOT_DIR = DATA_DIR / "hotpotqa_synth"
ARITH_FILE = ARITH_DIR / "test.jsonl"
HOTPOT_FILE = HOTPOT_DIR / "test.jsonl.gz"

TRAIN_SEED = 1234
TEST_SEED = 20251125
N_TEST = 500
# Held-out contexts are kept between these sizes, in tokens of `eval.tiny.tokenizer`.
TEST_CONTEXT_TOKENS = (1000, 4000)
# Worked arithmetic solutions are kept between these sizes (tokens, without the eos padding).
ARITH_SOLUTION_TOKENS = (100, 250)

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
    ("Mia", "she"), ("Sam", "he"), ("Leo", "he"), ("Emma", "she"), ("Noah", "he"), ("Ava", "she"),
    ("Liam", "he"), ("Zoe", "she"), ("Omar", "he"), ("Lily", "she"), ("Ben", "he"), ("Nora", "she"),
    ("Jack", "he"), ("Ella", "she"), ("Ravi", "he"), ("Grace", "she"), ("Tom", "he"), ("Ruby", "she"),
    ("Max", "he"), ("Chloe", "she"), ("Ivan", "he"), ("Sara", "she"), ("Luke", "he"), ("Anna", "she"),
    ("Finn", "he"), ("Maya", "she"), ("Kai", "he"), ("Lucy", "she"), ("Eli", "he"), ("Hana", "she"),
]  # fmt: skip
ARITH_OBJECTS = [
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "cards", "shells", "stamps",
    "balloons", "crayons", "beads", "buttons", "candies", "eggs", "flowers", "rocks", "toys", "cupcakes",
    "oranges", "lemons", "feathers", "ribbons", "puzzles", "erasers",
]  # fmt: skip
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets"]
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


def _syllable_names(rng: random.Random, count: int, taken: set[str], syllables: tuple[int, int], endings: list[str]) -> list[str]:
    onsets = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
              "tr", "v", "z", "th", "sh", "qu", "w", "y"]  # fmt: skip
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
    """Invented names (one token each under the word-level tokenizer), fixed by a constant seed."""
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
    "painter", "poet", "chemist", "singer", "farmer", "sailor", "teacher", "doctor", "writer", "baker",
    "pilot", "judge", "dancer", "builder", "architect", "composer", "engineer", "historian", "actor", "merchant",
]  # fmt: skip
TOPICS = ["bridges", "birds", "old maps", "glass", "music", "rivers", "stars", "trains", "coins", "gardens", "ships",
          "clocks", "poems", "salt", "silk", "paper", "wine", "tea"]  # fmt: skip
PRODUCTS = ["glass", "silk", "olives", "clocks", "cheese", "paper", "wool", "pottery", "bread", "boats", "carpets",
            "honey", "salt", "lamps", "tea", "copper"]  # fmt: skip
CITY_KINDS = ["city", "town", "port city", "small town", "large city", "market town"]
REGIONS = ["north", "south", "east", "west", "center"]
WEEKDAYS = ["Monday", "Tuesday", "Friday", "Saturday", "Sunday"]


# ----------------------------------------------------------------------------- arithmetic
MAX_VALUE = 99  # every quantity stays in 0..99: two digits, so each step is learnable digit by digit


def make_arith(rng: random.Random, n_ops: int | None = None) -> dict[str, str]:
    """A GSM8K-style word problem with `n_ops` (default 4-7) steps, every quantity in 0..99.

    The solution restates each step, writes its arithmetic and the new total, and ends in
    ``"\\n#### <n>"``; it is 100-250 tokens long (the ops count is redrawn until it is).
    Returns {"question", "answer"}.
    """
    lo, hi = ARITH_SOLUTION_TOKENS
    while True:
        k = n_ops or rng.randint(4, 7)
        example = _arith_person(rng, k) if rng.random() < 0.7 else _arith_scene(rng, k)
        if lo <= count_tokens(" " + example["answer"]) <= hi:
            return example


def _add_amount(rng: random.Random, value: int) -> int | None:
    return rng.randint(1, min(40, MAX_VALUE - value)) if value < MAX_VALUE else None


def _sub_amount(rng: random.Random, value: int) -> int | None:
    return rng.randint(1, min(40, value - 1)) if value > 1 else None


def _arith_person(rng: random.Random, n_ops: int) -> dict[str, str]:
    (name, pron), (other, _) = rng.sample(ARITH_PEOPLE, 2)
    obj = rng.choice(ARITH_OBJECTS)
    obj_pron = "her" if pron == "she" else "him"
    value = rng.randint(10, 60)
    question_lines = [f"{name} has {value} {obj}."]
    steps = [f"{name} starts with {value} {obj}."]
    ask = f"How many {obj} does {name} have now?"
    done = 0
    while done < n_ops:
        last = done == n_ops - 1
        subject = pron.capitalize() if rng.random() < 0.6 else name
        lead = subject
        if len(question_lines) > 1 and rng.random() < 0.4:
            lead = f"{rng.choice(THEN)} {subject if subject == name else pron}"
        kind = rng.choice(["gain", "gain", "lose", "lose", "packs", "mul", "half", "share"])
        if kind == "share" and last and value >= 4 and (ks := [k for k in range(2, 7) if value % k == 0]):
            k = rng.choice(ks)
            question_lines.append(f"{lead} shares them equally among {k} friends.")
            steps.append(f"{pron.capitalize()} shares {value} {obj} among {k} friends: {value} / {k} = {value // k}. "
                         f"Each friend gets {value // k} {obj}.")
            ask = f"How many {obj} does each friend get?"
            value //= k
        elif kind == "packs" and (k := rng.randint(2, 6)) * (m := rng.randint(2, 9)) <= MAX_VALUE - value:
            box = rng.choice(CONTAINERS)
            question_lines.append(f"{lead} buys {k} {box} with {m} {obj} in each.")
            steps.append(f"{pron.capitalize()} buys {k} {box} of {m}: {k} * {m} = {k * m}. "
                         f"Then {value} + {k * m} = {value + k * m}. Now {pron} has {value + k * m} {obj}.")
            value += k * m
        elif kind == "mul" and value * 2 <= MAX_VALUE:
            k = 3 if value * 3 <= MAX_VALUE and rng.random() < 0.4 else 2
            word = {2: "doubles", 3: "triples"}[k]
            question_lines.append(f"{lead} {word} the number of {obj}.")
            steps.append(f"{pron.capitalize()} {word} them: {value} * {k} = {value * k}. Now {pron} has {value * k} {obj}.")
            value *= k
        elif kind == "half" and value % 2 == 0 and value >= 4:
            question_lines.append(f"{lead} gives half of them to {other}.")
            steps.append(f"{pron.capitalize()} gives away half: {value} / 2 = {value // 2}. Now {pron} has {value // 2} {obj}.")
            value //= 2
        elif kind == "lose" and (n := _sub_amount(rng, value)):
            verb = rng.choice([f"gives {n} to {other}", f"loses {n}", f"sells {n}", f"uses {n}"])
            question_lines.append(f"{lead} {verb}.")
            steps.append(
                f"{pron.capitalize()} {verb.split()[0]} {n}: {value} - {n} = {value - n}. Now {pron} has {value - n} {obj}."
            )
            value -= n
        elif kind in ("gain", "mul", "half") and (n := _add_amount(rng, value)):
            verb = rng.choice(["buys", "finds", "picks up", "wins"])
            if rng.random() < 0.3:
                question_lines.append(f"{other} gives {obj_pron} {n} more.")
                steps.append(f"{other} gives {obj_pron} {n}: {value} + {n} = {value + n}. Now {pron} has {value + n} {obj}.")
            else:
                question_lines.append(f"{lead} {verb} {n} more.")
                steps.append(f"{pron.capitalize()} {verb} {n}: {value} + {n} = {value + n}. Now {pron} has {value + n} {obj}.")
            value += n
        else:
            continue
        done += 1
    question = " ".join(question_lines + [ask])
    return {"question": question, "answer": " ".join(steps) + f"\n#### {value}"}


def _arith_scene(rng: random.Random, n_ops: int) -> dict[str, str]:
    noun, place, add, remove = rng.choice(ARITH_SCENES)
    value = rng.randint(10, 60)
    question_lines = [f"There are {value} {noun} {place}."]
    steps = [f"At first there are {value} {noun}."]
    ask = f"How many {noun} are {place} now?"
    done = 0
    while done < n_ops:
        last = done == n_ops - 1
        prefix = f"{rng.choice(THEN)} " if rng.random() < 0.4 else ""
        kind = rng.choice(["add", "add", "sub", "sub", "mul", "split"])
        if kind == "split" and last and value >= 4 and (ks := [k for k in range(2, 7) if value % k == 0]):
            k = rng.choice(ks)
            question_lines.append(f"{prefix}the {noun} are split equally into {k} groups.")
            steps.append(f"They are split into {k} groups: {value} / {k} = {value // k}. Each group has {value // k} {noun}.")
            ask = f"How many {noun} are in each group?"
            value //= k
        elif kind == "mul" and value * 2 <= MAX_VALUE:
            question_lines.append(f"{prefix}the number of {noun} {place} doubles.")
            steps.append(f"The number doubles: {value} * 2 = {value * 2}. Now there are {value * 2} {noun}.")
            value *= 2
        elif kind == "sub" and (n := _sub_amount(rng, value)):
            question_lines.append(prefix + remove.format(n=n))
            steps.append(f"{n} leave: {value} - {n} = {value - n}. Now there are {value - n} {noun}.")
            value -= n
        elif kind in ("add", "mul", "split") and (n := _add_amount(rng, value)):
            question_lines.append(prefix + add.format(n=n))
            steps.append(f"{n} come: {value} + {n} = {value + n}. Now there are {value + n} {noun}.")
            value += n
        else:
            continue
        done += 1
    question_lines = [s[0].upper() + s[1:] for s in question_lines]
    return {"question": " ".join(question_lines + [ask]), "answer": " ".join(steps) + f"\n#### {value}"}


def make_arith_drill(rng: random.Random, n_ops: int | None = None) -> dict[str, str]:
    """A training-only drill: a chain of `n_ops` (default 12-24) operations written in symbols
    ("Question: 51 + 17 , - 24 , * 2 ?") whose solution is the bare equations ("51 + 17 = 68. 68 - 24
    = 44. ..."), every quantity in 0..99 as in `make_arith`.

    Why: in a worked word problem ~3% of the response tokens are computed digits, so the first
    proxies learnt the format and copied operands but never learnt two-digit sums. A drill packs
    ~25% computed digits, in the same "a + b = c." form the solutions use. Its prompt has no words,
    so it never competes with the word-problem format. Returns {"question", "answer"}.
    """
    hi = ARITH_SOLUTION_TOKENS[1]
    while True:
        k = n_ops or rng.randint(12, 24)
        value = rng.randint(10, 60)
        ops, steps = [], []
        while len(ops) < k:
            kind = rng.choice(["add", "add", "sub", "sub", "mul", "div"])
            if kind == "mul" and (ms := [m for m in (2, 3) if value * m <= MAX_VALUE]):
                op, n = "*", rng.choice(ms)
                new = value * n
            elif kind == "div" and value >= 4 and (ds := [d for d in range(2, 7) if value % d == 0]):
                op, n = "/", rng.choice(ds)
                new = value // n
            elif kind == "sub" and (n := _sub_amount(rng, value)):
                op, new = "-", value - n
            elif kind in ("add", "mul", "div") and (n := _add_amount(rng, value)):
                op, new = "+", value + n
            else:
                continue
            ops.append(f"{op} {n}")
            steps.append(f"{value} {op} {n} = {new}.")
            value = new
        start = steps[0].split(" ", 1)[0]
        example = {"question": f"{start} " + " , ".join(ops) + " ?", "answer": " ".join(steps) + f"\n#### {value}"}
        if count_tokens(" " + example["answer"]) <= hi:
            return example


# ----------------------------------------------------------------------------- multi-hop QA
def _city_paragraph(rng: random.Random, city: str, country: str, river: str, force_river: bool) -> str:
    first = rng.choice(
        [
            f"{city} is a {rng.choice(CITY_KINDS)} in {country}.",
            f"{city} is a {rng.choice(CITY_KINDS)} in the {rng.choice(REGIONS)} of {country}.",
        ]
    )
    extra = [
        f"{city} was founded in {rng.randint(900, 1900)}.",
        f"About {rng.randint(2, 900)} thousand people live in {city}.",
        f"The {rng.choice(['city', 'town'])} is known for its {rng.choice(PRODUCTS)}.",
        f"It has {rng.randint(2, 40)} bridges and {rng.randint(2, 60)} parks.",
        f"Its market opens every {rng.choice(WEEKDAYS)}.",
    ]
    rng.shuffle(extra)
    body = [first] + extra[: rng.randint(1, 4)]
    if force_river or rng.random() < 0.6:
        body.insert(rng.randint(1, len(body)), f"{city} lies on the {river} river.")
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


def make_hotpot(rng: random.Random, n_distractors: int, hops: int = 2) -> dict[str, str]:
    """A two-hop question over `n_distractors + 2` paragraphs (two gold, the rest distractors).

    Kinds: person -> birthplace city -> country ("In which country was X born?"), person -> city
    -> river, and comparison of two people's birth years. Distractors are paragraphs about other
    people (born in and moving between the same cities) and other cities (in the same countries,
    on the same rivers). Returns {"context", "question", "answer" (one word), "solution" (the
    trained target: the two facts, then "#### answer"), "kind"}.

    `hops=1` (training only): a one-fact question about one gold paragraph (a person's birthplace,
    a city's country or river), the retrieval step the two-hop questions chain; it gives the model
    a direct signal for each hop (the held-out set is two-hop only).
    """
    if hops not in (1, 2):
        raise ValueError(f"hops must be 1 or 2, got {hops!r}")
    n_distractors = max(0, n_distractors)
    countries, rivers = ENTITIES["countries"], ENTITIES["rivers"]
    cities = rng.sample(ENTITIES["cities"], min(len(ENTITIES["cities"]), n_distractors + 8))
    people = rng.sample(ENTITIES["people"], min(len(ENTITIES["people"]), n_distractors + 4))
    city_country = {c: rng.choice(countries) for c in cities}
    city_river = {c: rng.choice(rivers) for c in cities}
    born = dict(zip(people, rng.sample(range(1800, 2000), len(people))))
    birth = {p: rng.choice(cities) for p in people}

    roll = rng.random()
    kind = "bridge_country" if roll < 0.45 else "bridge_river" if roll < 0.7 else "comparison"
    used_people: set[str] = set()
    used_cities: set[str] = set()
    if hops == 1:
        kind = rng.choice(["single_city", "single_country", "single_river"])
        if kind == "single_city":
            person = people[0]
            used_people.add(person)
            city = birth[person]
            question, answer = f"In which city was {person} born?", city
            chain = f"{person} was born in {city}."
            gold = [_person_paragraph(rng, person, city, born[person], cities)]
        else:
            city = cities[0]
            used_cities.add(city)
            if kind == "single_country":
                question, answer = f"In which country is {city}?", city_country[city]
                chain = f"{city} is in {answer}."
            else:
                question, answer = f"On which river lies {city}?", city_river[city]
                chain = f"{city} lies on the {answer} river."
            gold = [_city_paragraph(rng, city, city_country[city], city_river[city], kind == "single_river")]
    elif kind == "comparison":
        a, b = people[0], people[1]
        used_people |= {a, b}
        later = rng.random() < 0.5
        word = rng.choice(["was born later", "is younger"] if later else ["was born first", "is older"])
        question = f"Who {word}, {a} or {b}?"
        answer = (a if born[a] > born[b] else b) if later else (a if born[a] < born[b] else b)
        chain = f"{a} was born in {born[a]}. {b} was born in {born[b]}."
        gold = [_person_paragraph(rng, p, birth[p], born[p], cities) for p in (a, b)]
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
            chain = f"{person} was born in {city}. {city} is in {answer}."
        else:
            question = rng.choice(
                [
                    f"Which river flows through the city where {person} was born?",
                    f"On which river lies the birthplace of {person}?",
                ]
            )
            answer = city_river[city]
            chain = f"{person} was born in {city}. {city} lies on the {answer} river."
        gold = [
            _person_paragraph(rng, person, city, born[person], cities),
            _city_paragraph(rng, city, city_country[city], city_river[city], kind == "bridge_river"),
        ]

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
    return {"context": context, "question": question, "answer": answer, "solution": f"{chain}\n#### {answer}", "kind": kind}


# ----------------------------------------------------------------------------- prompts and scoring
def hotpot_prompt(context: str, question: str) -> str:
    return f"{HOTPOT_INSTRUCTION}\n\n{context}\n\nQuestion: {question}\nAnswer:"


def prompt_and_target(family: str, example: dict[str, str]) -> tuple[str, str]:
    """(prompt, target) text of an example; the target starts with a space like lm-eval's."""
    if family == "arith":
        return arith_prompt(example["question"]), " " + example["answer"]
    if family == "hotpot":
        return hotpot_prompt(example["context"], example["question"]), " " + example["solution"]
    raise ValueError(f"unknown task family {family!r}; expected 'arith' or 'hotpot'")


def hotpot_word(text: str) -> str | None:
    """The first word after '####' (or, without one, the first word), lower-cased; None if none."""
    tail = text.split("####", 1)[1] if "####" in text else text
    words = re.findall(r"[A-Za-z0-9]+", tail)
    return words[0].lower() if words else None


def answer_key(family: str, text: str) -> str | None:
    """What exact match compares: the final number (arith) or the answer word (hotpot)."""
    return arith_number(text) if family == "arith" else hotpot_word(text)


def is_correct(family: str, generated: str, answer: str) -> bool:
    """Exact match of `answer_key` (for hotpot `answer` is the one-word gold answer)."""
    if family == "arith":
        pred = arith_number(generated)
        return pred is not None and pred == arith_number(answer)
    pred = hotpot_word(generated)
    return pred is not None and pred == answer.strip().lower()


# ----------------------------------------------------------------------------- splits
def example_rng(family: str, split: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{family}/{split}/{seed}/{index}")


PARAGRAPH_TOKENS = 41  # mean tokens of one paragraph including "Paragraph i:" (measured: 40.6)


def hotpot_distractors_for_tokens(rng: random.Random, low: int, high: int) -> int:
    """A distractor count whose context lands roughly in [low, high] tokens."""
    return max(0, int(rng.uniform(low, high) / PARAGRAPH_TOKENS) - 2)


def generate_test_examples(family: str, n: int = N_TEST, seed: int = TEST_SEED) -> list[dict[str, str]]:
    """The fixed held-out set of a family, regenerated from the test seed (what --write saves)."""
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


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_examples(family: str, n: int = N_TEST) -> list[dict[str, str]]:
    """The first n held-out examples: from the committed file when present, else regenerated."""
    path = {"arith": ARITH_FILE, "hotpot": HOTPOT_FILE}.get(family)
    if path is None:
        raise ValueError(f"unknown task family {family!r}; expected 'arith' or 'hotpot'")
    if path.is_file() and n <= N_TEST:
        return read_jsonl(path)[:n]
    return generate_test_examples(family, n)


class TestPromptFilter:
    """Set of held-out prompts; training streams drop any example that is in it."""

    __test__ = False  # not a pytest class

    def __init__(self, n: int = N_TEST):
        self.keys = {prompt_and_target("arith", ex)[0] for ex in test_examples("arith", n)}
        self.keys |= {prompt_and_target("hotpot", ex)[0] for ex in test_examples("hotpot", n)}

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.keys


def train_examples(
    family: str, seed: int = TRAIN_SEED, start: int = 0, distractors: tuple[int, int] = (1, 90)
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
        for p, t in (prompt_and_target("arith", make_arith(rng, 4 + i % 4)), prompt_and_target("hotpot", make_hotpot(rng, 6))):
            texts += [p, t]
    words = [w for lst in ENTITIES.values() for w in lst]
    words += [w for w, _ in ARITH_PEOPLE] + ARITH_OBJECTS + OCCUPATIONS + TOPICS + PRODUCTS + CONTAINERS + WEEKDAYS
    texts.append(" ".join(words))
    return texts


# ----------------------------------------------------------------------------- files
README_TEXT = """# {title} (synthetic)

This is a SYNTHETIC data set made by this project: it is NOT {real}. The examples come from
the seeded generators in `eval/tiny/tasks.py` (family `{family}`, split seed {seed}) and are
written by

    python -m eval.tiny.tasks --write

{n} examples, one JSON object per line{gz}, fields {fields}. {details}
Training examples use a different seed stream, and any training example whose prompt equals a
test prompt is dropped. Prompt: `{prompt}`; trained target: `{target}`.
"""


def write_test_files(n: int = N_TEST) -> list[Path]:
    arith = generate_test_examples("arith", n)
    hotpot = generate_test_examples("hotpot", n)
    ARITH_DIR.mkdir(parents=True, exist_ok=True)
    HOTPOT_DIR.mkdir(parents=True, exist_ok=True)
    with open(ARITH_FILE, "w", encoding="utf-8") as f:
        for row in arith:
            f.write(json.dumps({k: row[k] for k in ("question", "answer")}, ensure_ascii=False) + "\n")
    # gzip with a fixed mtime: the same examples always give the same bytes
    with open(HOTPOT_FILE, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in hotpot:
            keys = ("context", "question", "answer", "solution", "kind")
            f.write((json.dumps({k: row[k] for k in keys}, ensure_ascii=False) + "\n").encode())
    old = HOTPOT_DIR / "test.jsonl"
    if old.exists():
        old.unlink()
    sol = sorted(count_tokens(" " + r["answer"]) for r in arith)
    ctx = sorted(count_tokens(r["context"]) for r in hotpot)
    kinds = {k: sum(r["kind"] == k for r in hotpot) for k in ("bridge_country", "bridge_river", "comparison")}
    (ARITH_DIR / "README.md").write_text(
        README_TEXT.format(
            title="arith_synth", real="GSM8K", family="arith", seed=TEST_SEED, n=n, gz="",
            fields="`question`, `answer`",
            details="GSM8K-style word problems with 4-7 steps (+, -, *, /), every quantity 0-99; the answer "
            f"restates each step with its arithmetic and ends in `#### <number>` like GSM8K; answers are "
            f"{sol[0]}-{sol[-1]} tokens (median {sol[len(sol) // 2]}) under the project's tokenizer (digits "
            "are single tokens). Generation setting: gen 256, steps 256, semi-AR block 8 (GSM8K's).",
            prompt="Question: {question}\\nAnswer:", target=" {answer}",
        )
    )  # fmt: skip
    (HOTPOT_DIR / "README.md").write_text(
        README_TEXT.format(
            title="hotpotqa_synth", real="the real HotpotQA", family="hotpot", seed=TEST_SEED, n=n,
            gz=" (gzip)", fields="`context`, `question`, `answer` (one word), `solution` (the trained target), `kind`",
            details=f"HotpotQA-style two-hop questions about invented people, cities, countries and rivers "
            f"({kinds['bridge_country']} person->city->country, {kinds['bridge_river']} person->city->river, "
            f"{kinds['comparison']} birth-year comparisons); the two gold paragraphs sit among distractor "
            f"paragraphs about other people and cities; contexts {ctx[0]}-{ctx[-1]} tokens (median "
            f"{ctx[len(ctx) // 2]}). Scored by exact match of the word after `####`. Generation setting: "
            "gen 32, steps 32, block 32 (HotpotQA's).",
            prompt=HOTPOT_INSTRUCTION + "\\n\\n{context}\\n\\nQuestion: {question}\\nAnswer:",
            target=" {solution}",
        )
    )  # fmt: skip
    return [ARITH_FILE, HOTPOT_FILE]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write eval/data/{arith,hotpotqa}_synth/test.jsonl[.gz]")
    parser.add_argument("--n", type=int, default=N_TEST)
    parser.add_argument("--show", type=int, default=0, help="print this many training examples of each family")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_test_files(args.n):
            print(f"wrote {path}")
    for family in ("arith", "hotpot"):
        stream = train_examples(family, distractors=(1, 4))
        for _ in range(args.show):
            prompt, target = prompt_and_target(family, next(stream))
            print(f"--- {family} ({count_tokens(prompt)} + {count_tokens(target)} tokens)\n{prompt}{target}\n")


if __name__ == "__main__":
    main()
