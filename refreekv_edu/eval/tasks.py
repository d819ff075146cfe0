"""Offline tasks: prompts generated from a seed at a requested length, with their answers and metric.

Tasks (all deterministic given ``(task, length, index, seed)`` and the haystack source):

- ``passkey``: a five-digit pass key hidden at a depth in a long text; ask for it. Metric: ``contains``.
- ``multi_needle``: several "magic number for <word>" needles spread through the text; ask for one.
  The others are distractors. Metric: ``contains``.
- ``short``: short instructions (arithmetic, capitals, spelling, sequences): tens of tokens, so a
  good policy should prune almost nothing. Metric: ``contains``.
- ``continuation``: long natural text cut mid-paragraph; continue it (no chat template). Metric: ``rouge_l``
  against the true rest of the paragraph; the fidelity metrics matter most here.
- ``reading``: a short made-up paragraph about a person (~120 tokens) and one question about a fact in it
  (reading comprehension). Metric: ``contains``.
- ``repeat``: a long, redundant text: one paragraph written out again and again, then begun once more and cut
  (no chat template); continuing it means copying. Metric: ``continues`` (the output is the true rest, word by
  word). A good policy may prune such a text hard: every copy but the newest is redundant.

``length`` is a target in tokens for the whole prompt. Pass ``count_tokens`` (the model's tokenizer) to
hit it closely; the default estimate is four characters per token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .haystack import haystack_units

TokenCounter = Callable[[str], int]

TASKS = ("passkey", "multi_needle", "short", "continuation", "reading", "repeat")
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)


@dataclass
class Sample:
    """One prompt to run, with what a correct answer looks like.

    Attributes:
        id: unique and stable, e.g. ``"passkey-L1024-d0.50-s0-i1"``; the runner resumes by it.
        task: task or dataset name (``"passkey"``, ``"longbench/qasper"``, ...).
        prompt: the user message (``chat=True``) or raw text to continue (``chat=False``).
        references: acceptable answers (the metric takes the best match or, for ``contains``, the share found).
        metric: a name in :data:`refreekv_edu.eval.metrics.METRICS`.
        chat: apply the model's chat template (instruction tasks) or feed raw text (continuation).
        max_new_tokens: decode steps for this sample.
        meta: extra facts (requested length, needle depth, dataset fields a metric needs such as ``incorrect``).
    """

    id: str
    task: str
    prompt: str
    references: list[str]
    metric: str
    chat: bool = True
    max_new_tokens: int = 16
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``dataclasses.asdict``: ``references`` and ``meta`` are copied)."""
        return asdict(self)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters of English per token."""
    return max(1, round(len(text) / 4))


def _fill(units: list[str], budget: int, count: TokenCounter) -> tuple[list[str], list[int]]:
    """Take units in order until their token counts sum to ``budget`` (at least one unit)."""
    chosen, sizes, total = [], [], 0
    for unit in units:
        size = count(unit) + 1  # +1 for the separating space/newline
        if chosen and total + size > budget:
            break
        chosen.append(unit)
        sizes.append(size)
        total += size
    return chosen, sizes


def insert_at_depths(units: list[str], sizes: list[int], needles: Sequence[str], depths: Sequence[float]) -> tuple[list[str], list[float]]:
    """Insert each needle between units so that ``depth`` of the haystack's tokens come before it.

    Returns the new unit list and the depths actually achieved (token share before each needle).
    """
    total = sum(sizes)
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    # Boundary b (insert before units[b]) has cum[b] tokens before it; take the closest boundary.
    slots = []
    for needle, depth in zip(needles, depths):
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must lie in [0, 1] (0 = start of the text, 1 = end), got {depth}")
        b = min(range(len(cum)), key=lambda i: (abs(cum[i] - depth * total), i))
        slots.append((b, needle))
    out: list[str] = []
    for b in range(len(units) + 1):
        out.extend(n for slot, n in slots if slot == b)
        if b < len(units):
            out.append(units[b])
    achieved = [cum[b] / total if total else 0.0 for b, _ in slots]
    return out, achieved


def _haystack(source: str, seed: int, budget: int, count: TokenCounter) -> tuple[list[str], list[int]]:
    per_unit = {"docs": 60, "prose": 80}.get(source, 16)  # tokens per unit, roughly
    units = haystack_units(source, seed, max(8, 2 * budget // per_unit + 8))
    return _fill(units, budget, count)


def passkey(length: int, depth: float, seed: int, index: int = 0, count: TokenCounter = approx_tokens, source: str = "prose") -> Sample:
    """A pass key at ``depth`` (0 = start, 1 = end) of a ~``length``-token prompt."""
    rng = random.Random(f"passkey-{length}-{depth}-{seed}-{index}")
    key = str(rng.randint(10000, 99999))
    head = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it.\n\n"
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "\n\nWhat is the pass key? Answer with the number only."
    budget = length - count(head + needle + question) - 20  # ~20 tokens of chat template
    units, sizes = _haystack(source, seed * 1000 + index, budget, count)
    text, achieved = insert_at_depths(units, sizes, [needle], [depth])
    return Sample(
        id=f"passkey-L{length}-d{depth:.2f}-s{seed}-i{index}",
        task="passkey",
        prompt=head + " ".join(text) + question,
        references=[key],
        metric="contains",
        max_new_tokens=12,
        meta={"length": length, "depth": depth, "depth_achieved": achieved[0], "haystack": source, "needle": key},
    )


_NEEDLE_KEYS = ("apple", "river", "violet", "falcon", "copper", "meadow", "harbor", "lantern", "cedar", "comet", "saffron", "glacier")


def multi_needle(length: int, seed: int, index: int = 0, needles: int = 3, count: TokenCounter = approx_tokens, source: str = "prose") -> Sample:
    """``needles`` magic numbers at evenly spread depths; the question asks for one of them."""
    if not 2 <= needles <= len(_NEEDLE_KEYS):
        raise ValueError(f"needles must be between 2 and {len(_NEEDLE_KEYS)}, got {needles}")
    rng = random.Random(f"multi-{length}-{seed}-{index}-{needles}")
    keys = rng.sample(_NEEDLE_KEYS, needles)
    values = [str(rng.randint(10000, 99999)) for _ in keys]
    asked = rng.randrange(needles)
    head = "Some special magic numbers are hidden inside the following text. Remember them.\n\n"
    texts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    question = f"\n\nWhat is the special magic number for {keys[asked]}? Answer with the number only."
    budget = length - count(head + " ".join(texts) + question) - 20
    units, sizes = _haystack(source, seed * 1000 + 500 + index, budget, count)
    depths = [(i + 1) / (needles + 1) for i in range(needles)]
    text, achieved = insert_at_depths(units, sizes, texts, depths)
    return Sample(
        id=f"multi_needle-L{length}-n{needles}-s{seed}-i{index}",
        task="multi_needle",
        prompt=head + " ".join(text) + question,
        references=[values[asked]],
        metric="contains",
        max_new_tokens=24,  # the model often restates the question ("The special magic number for X is ...") first
        meta={"length": length, "depth": depths[asked], "depth_achieved": achieved[asked], "keys": keys,
              "values": values, "asked": keys[asked], "haystack": source, "needle": values[asked]},
    )


_CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
             ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("China", "Beijing"), ("Greece", "Athens"))
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WORDS = ("garden", "window", "planet", "silver", "orange", "dragon", "pencil", "castle", "summer", "rocket")


def short_instruction(seed: int, index: int = 0) -> Sample:
    """A short instruction with a checkable answer (tens of tokens: little to prune)."""
    rng = random.Random(f"short-{seed}-{index}")
    kind = index % 4
    if kind == 0:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        prompt, answer = f"What is {a} plus {b}? Answer with the number only.", str(a + b)
    elif kind == 1:
        country, capital = rng.choice(_CAPITALS)
        prompt, answer = f"What is the capital city of {country}? Answer in one word.", capital
    elif kind == 2:
        word = rng.choice(_WORDS)
        prompt, answer = f"Write the word '{word}' in capital letters.", word.upper()
    else:
        start = rng.randrange(5)
        days = ", ".join(_WEEKDAYS[start : start + 3])
        prompt, answer = f"Which day of the week comes after this list: {days}? Answer in one word.", _WEEKDAYS[(start + 3) % 7]  # Sunday -> Monday
    return Sample(
        id=f"short-s{seed}-i{index}",
        task="short",
        prompt=prompt,
        references=[answer],
        metric="contains",
        max_new_tokens=12,
        meta={"length": 0, "kind": ("add", "capital", "upper", "weekday")[kind]},
    )


def continuation(length: int, seed: int, index: int = 0, count: TokenCounter = approx_tokens, source: str = "prose",
                 reference_words: int = 24) -> Sample:
    """Natural text of ~``length`` tokens cut in the middle of a paragraph; the reference is what follows."""
    units = haystack_units(source, seed * 1000 + 900 + index, max(16, 2 * length // 40 + 16))
    if source == "procedural":  # sentences are short: group them four by four into paragraphs
        units = [" ".join(units[i : i + 4]) for i in range(0, len(units), 4)]
    # The last unit long enough to split becomes the cut paragraph; everything before is context.
    tail_idx = next(i for i in range(len(units) - 1, -1, -1) if len(units[i].split()) >= 24)
    tail = units.pop(tail_idx).split()
    cut = len(tail) // 3
    lead, rest = " ".join(tail[:cut]), " ".join(tail[cut : cut + reference_words])
    context, _ = _fill(units, length - count(lead) - 2, count)
    return Sample(
        id=f"continuation-L{length}-s{seed}-i{index}",
        task="continuation",
        prompt="\n\n".join(context + [lead]),
        references=[rest],
        metric="rouge_l",
        chat=False,
        max_new_tokens=32,
        meta={"length": length, "haystack": source},
    )


_PEOPLE = (("Mara", "she", "her"), ("Tomas", "he", "his"), ("Ines", "she", "her"), ("Pavel", "he", "his"),
           ("Lena", "she", "her"), ("Oskar", "he", "his"), ("Nadia", "she", "her"), ("Felix", "he", "his"))
_TOWNS = ("Eskby", "Valmont", "Corrin", "Haldor", "Brisa", "Tolland", "Maribel", "Odessen")
_JOBS = ("baker", "teacher", "nurse", "carpenter", "librarian", "fisher", "painter", "gardener")
_COLOURS = ("blue", "red", "green", "yellow", "white", "orange")
_PETS = (("cat", "Pepper"), ("dog", "Biscuit"), ("parrot", "Kiwi"), ("rabbit", "Clover"), ("goat", "Juniper"))
_PLANTS = ("tomatoes", "roses", "potatoes", "tulips", "carrots", "sunflowers")


def reading(seed: int, index: int = 0) -> Sample:
    """A made-up paragraph (~120 tokens) with several facts; the question asks for one (cycling with ``index``)."""
    rng = random.Random(f"reading-{seed}-{index}")
    (name, he, his), town, job = rng.choice(_PEOPLE), rng.choice(_TOWNS), rng.choice(_JOBS)
    colour, (pet, pet_name), plant = rng.choice(_COLOURS), rng.choice(_PETS), rng.choice(_PLANTS)
    paragraph = (
        f"{name} lives in {town}, a small town between the hills and the sea. {he.capitalize()} works as a {job} "
        f"and walks to work every morning, whatever the weather. {his.capitalize()} house is painted {colour}, and "
        f"in the garden behind it {he} grows {plant}. {name} has a {pet} called {pet_name}, who sleeps by the stove "
        f"all winter. On Sundays {he} visits {his} sister in the city, and they cook dinner together."
    )
    questions = (
        (f"In which town does {name} live?", town, "town"),
        (f"What colour is {name}'s house?", colour, "colour"),
        (f"What is the name of {name}'s {pet}?", pet_name, "pet"),
        (f"What does {name} grow in the garden?", plant, "plant"),
        (f"What is {name}'s job?", job, "job"),
    )
    question, answer, kind = questions[index % len(questions)]
    return Sample(
        id=f"reading-s{seed}-i{index}",
        task="reading",
        prompt=f"Read the paragraph and answer the question.\n\n{paragraph}\n\nQuestion: {question} Answer in one word.",
        references=[answer],
        metric="contains",
        max_new_tokens=12,
        meta={"length": 0, "kind": kind},
    )


def repeat(length: int, seed: int, index: int = 0, count: TokenCounter = approx_tokens, source: str = "prose",
           reference_words: int = 16) -> Sample:
    """One paragraph written out until ~``length`` tokens, then begun again and cut; the reference is what follows.

    The cut falls after the first third of the paragraph's words; the reference is the next ``reference_words``.
    """
    units = haystack_units(source, seed * 1000 + 700 + index, 64)
    if source == "procedural":
        units = [" ".join(units[i : i + 4]) for i in range(0, len(units), 4)]
    paragraph = next(u for u in units if 24 <= len(u.split()) <= 120)
    words = paragraph.split()
    cut = len(words) // 3
    lead, rest = " ".join(words[:cut]), " ".join(words[cut : cut + reference_words])
    copies = max(1, (length - count(lead) - 2) // (count(paragraph) + 1))
    return Sample(
        id=f"repeat-L{length}-s{seed}-i{index}",
        task="repeat",
        prompt="\n\n".join([paragraph] * copies + [lead]),
        references=[rest],
        metric="continues",
        chat=False,
        max_new_tokens=12,
        meta={"length": length, "copies": copies, "haystack": source},
    )


def make_samples(
    task: str,
    length: int,
    n: int,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    source: str = "prose",
) -> list[Sample]:
    """``n`` samples of ``task`` at ~``length`` tokens (``short`` and ``reading`` ignore ``length``).

    ``passkey`` cycles through ``depths``; sample ``i`` of a task is always the same for the same seed.
    """
    count = count_tokens or approx_tokens
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; offline tasks: {', '.join(TASKS)} (datasets: see eval.datasets)")
    if task not in ("short", "reading") and length < 64:
        raise ValueError(f"length must be at least 64 tokens for task {task!r}, got {length}")
    if task == "passkey":
        return [passkey(length, depths[i % len(depths)], seed, i, count, source) for i in range(n)]
    if task == "multi_needle":
        return [multi_needle(length, seed, i, count=count, source=source) for i in range(n)]
    if task == "short":
        return [short_instruction(seed, i) for i in range(n)]
    if task == "reading":
        return [reading(seed, i) for i in range(n)]
    if task == "repeat":
        return [repeat(length, seed, i, count, source) for i in range(n)]
    return [continuation(length, seed, i, count, source) for i in range(n)]
