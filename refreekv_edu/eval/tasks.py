"""Offline tasks: prompts generated from a seed at a requested length, with their answers and metric.

Tasks (all deterministic given ``(task, length, index, seed)`` and the haystack source):

- ``passkey``: a five-digit pass key hidden at a depth in a long text; ask for it. Metric: ``contains``.
- ``multi_needle``: several "magic number for <word>" needles spread through the text; ask for one.
  The others are distractors. Metric: ``contains``.
- ``short``: short instructions (arithmetic, capitals, spelling, sequences): tens of tokens, so a
  good policy should prune almost nothing. Metric: ``contains``.
- ``continuation``: long natural text cut mid-paragraph; continue it (no chat template). Metric: ``rouge_l``
  against the true rest of the paragraph; the fidelity metrics matter most here.

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

TASKS = ("passkey", "multi_needle", "short", "continuation")
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
    per_unit = 60 if source == "docs" else 16
    units = haystack_units(source, seed, max(8, 2 * budget // per_unit + 8))
    return _fill(units, budget, count)


def passkey(length: int, depth: float, seed: int, index: int = 0, count: TokenCounter = approx_tokens, source: str = "docs") -> Sample:
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


def multi_needle(length: int, seed: int, index: int = 0, needles: int = 3, count: TokenCounter = approx_tokens, source: str = "docs") -> Sample:
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
        prompt, answer = f"Which day of the week comes after this list: {days}? Answer in one word.", _WEEKDAYS[start + 3]
    return Sample(
        id=f"short-s{seed}-i{index}",
        task="short",
        prompt=prompt,
        references=[answer],
        metric="contains",
        max_new_tokens=12,
        meta={"length": 0, "kind": ("add", "capital", "upper", "weekday")[kind]},
    )


def continuation(length: int, seed: int, index: int = 0, count: TokenCounter = approx_tokens, source: str = "docs",
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


def make_samples(
    task: str,
    length: int,
    n: int,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    source: str = "docs",
) -> list[Sample]:
    """``n`` samples of ``task`` at ~``length`` tokens (``short`` ignores ``length``).

    ``passkey`` cycles through ``depths``; sample ``i`` of a task is always the same for the same seed.
    """
    count = count_tokens or approx_tokens
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; offline tasks: {', '.join(TASKS)} (datasets: see eval.datasets)")
    if task != "short" and length < 64:
        raise ValueError(f"length must be at least 64 tokens for task {task!r}, got {length}")
    if task == "passkey":
        return [passkey(length, depths[i % len(depths)], seed, i, count, source) for i in range(n)]
    if task == "multi_needle":
        return [multi_needle(length, seed, i, count=count, source=source) for i in range(n)]
    if task == "short":
        return [short_instruction(seed, i) for i in range(n)]
    return [continuation(length, seed, i, count, source) for i in range(n)]
