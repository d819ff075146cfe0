"""Filler text for long prompts, made at run time (nothing long is committed to the repository).

Three sources:

- ``"prose"`` (the default): paragraphs of descriptive English prose written by a seeded grammar
  (:mod:`refreekv_edu.eval.prose`); identical on every machine, Python version and import order, so a
  sample id names one exact prompt and the results page reproduces anywhere.
- ``"docs"``: natural English prose taken from the docstrings of Python standard-library modules that
  every Python installation has. Paragraphs are cleaned (no doctest lines, no tables) and shuffled by
  the seed. The exact text depends on the Python version (and, through lazily created objects, on what
  was imported first), so results on it do not reproduce across machines: opt in only to test robustness
  to a second kind of text.
- ``"procedural"``: one-clause sentences from a tiny grammar by a seeded random generator; identical on
  every machine and Python version.

A haystack is a list of *units* (paragraphs or sentences). Tasks glue units together until a token
budget is reached, and insert needles *between* units, so a needle never splits a sentence.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import random
import re
import warnings

from .prose import prose_paragraphs

#: The filler sources, the default first.
SOURCES = ("prose", "docs", "procedural")

#: Standard-library modules with long, prose-like docstrings (all pure Python, present everywhere).
DOC_MODULES = (
    "argparse",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest.case",
    "urllib.parse",
    "uuid",
    "warnings",
    "zipfile",
)

_CODE_LIKE = re.compile(r"(>>>|\.\.\. |[{}\[\]=<>|`]{2}|^\s*[-=*]{3,}|:\s*$)")


def _clean_paragraph(text: str) -> str | None:
    """One prose paragraph on one line, or ``None`` when the paragraph looks like code, a table or a heading."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if not lines or any(_CODE_LIKE.search(ln) for ln in lines):
        return None
    para = " ".join(lines)
    words = para.split()
    if len(words) < 12 or not para[0].isupper() or not para.endswith("."):
        return None
    letters = sum(ch.isalpha() or ch.isspace() for ch in para)
    if letters < 0.85 * len(para):  # mostly symbols/digits: not prose
        return None
    return para


@functools.lru_cache(maxsize=1)
def doc_paragraphs() -> tuple[str, ...]:
    """All clean prose paragraphs from :data:`DOC_MODULES` docstrings, de-duplicated, in a fixed order."""
    seen: dict[str, None] = {}
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a stripped-down Python may lack one; the others suffice
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj) or inspect.isfunction(obj)]
        for obj in objects:
            if getattr(obj, "__module__", name) not in (name, None) and obj is not module:
                continue  # re-exported from elsewhere: visited with its own module
            with warnings.catch_warnings():  # some typing aliases warn when their __doc__ is read
                warnings.simplefilter("ignore")
                doc = inspect.getdoc(obj) or ""
            for raw in re.split(r"\n\s*\n", doc):
                para = _clean_paragraph(raw)
                if para:
                    seen.setdefault(para, None)
    if len(seen) < 20:
        raise RuntimeError(
            "found too little docstring prose in the standard library (running with python -OO strips docstrings?); "
            "use haystack='procedural'"
        )
    return tuple(seen)


_SUBJECTS = ("The river", "A quiet village", "The old library", "Every traveller", "The northern wind", "A small boat",
             "The market square", "The lighthouse keeper", "A flock of geese", "The mountain road", "The baker",
             "An orchard", "The night train", "A young painter", "The clock tower", "The fishing fleet")
_VERBS = ("wanders past", "looks over", "waits beside", "turns toward", "rests near", "drifts across", "leans against",
          "circles around", "shines upon", "echoes through", "hides behind", "stretches beyond")
_OBJECTS = ("the harbour", "the wheat fields", "a row of chestnut trees", "the stone bridge", "the frozen lake",
            "an empty chapel", "the busy station", "a sleeping town", "the pine forest", "the salt marshes",
            "the copper roofs", "a narrow canal")
_TAILS = ("in the early morning", "while the bells ring", "as the fog lifts", "long after sunset", "during the first snow",
          "before the rain arrives", "under a pale moon", "when the tide turns", "as autumn begins", "at midday")


def procedural_sentences(count: int, seed: int) -> list[str]:
    """``count`` grammatical, meaningless sentences from a seeded grammar (same output on every machine)."""
    rng = random.Random(f"procedural-{seed}")
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}." for _ in range(count)]


def haystack_units(source: str, seed: int, count: int) -> list[str]:
    """``count`` filler units from ``source`` (one of :data:`SOURCES`), shuffled/generated by ``seed``.

    ``"docs"`` cycles through the shuffled paragraphs when more units are asked than exist.
    """
    if source == "prose":
        return prose_paragraphs(count, seed)
    if source == "procedural":
        return procedural_sentences(count, seed)
    if source != "docs":
        raise ValueError(
            f"unknown haystack source {source!r}; choose 'prose' (the default, the same everywhere), "
            "'docs' (stdlib docstrings, depend on the Python version) or 'procedural'"
        )
    paras = list(doc_paragraphs())
    rng = random.Random(f"docs-{seed}")
    rng.shuffle(paras)
    return [paras[i % len(paras)] for i in range(count)]
