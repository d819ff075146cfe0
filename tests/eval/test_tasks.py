"""Task generators: deterministic by seed, near the requested length, needles at the requested depth."""

from __future__ import annotations

import pytest

from refreekv_edu.eval import haystack, tasks
from refreekv_edu.eval.metrics import score


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@pytest.mark.parametrize("task", tasks.TASKS)
def test_deterministic_by_seed(task):
    a = tasks.make_samples(task, 512, 3, seed=7, count_tokens=words)
    b = tasks.make_samples(task, 512, 3, seed=7, count_tokens=words)
    c = tasks.make_samples(task, 512, 3, seed=8, count_tokens=words)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.prompt for s in a] != [s.prompt for s in c]
    assert len({s.id for s in a}) == 3


@pytest.mark.parametrize("source", ["prose", "docs", "procedural"])
@pytest.mark.parametrize("length", [256, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_passkey_at_requested_depth_and_length(source, length, depth):
    s = tasks.passkey(length, depth, seed=1, count=words, source=source)
    key = s.references[0]
    needle = f"The pass key is {key}."
    assert s.prompt.count(needle) == 1 and len(key) == 5
    assert score(s.metric, f"It is {key}.", s.references) == 1.0
    # Depth in the haystack, measured in the same "tokens" (words) the generator counted.
    body = s.prompt.split("\n\n")[1]
    before = words(body[: body.index(needle)])
    after = words(body[body.index(needle) + len(s.meta["needle"]) :])
    needle_words = words("The pass key is X. Remember it. X is the pass key.")
    measured = before / (words(body) - needle_words)
    largest_unit = max(words(u) for u in haystack.haystack_units(source, 1000, 50))
    assert abs(measured - depth) <= largest_unit / (words(body) - needle_words) + 1e-9
    assert abs(s.meta["depth_achieved"] - depth) <= largest_unit / (words(body) - needle_words) + 1e-9
    assert after >= 0
    # Length: within one haystack unit (+ the ~20 tokens reserved for a chat template) of the target.
    assert 0.9 * length - largest_unit - 25 <= words(s.prompt) <= length  # +1 per unit for separators


def test_multi_needle_distinct_needles_evenly_spread():
    s = tasks.multi_needle(2048, seed=3, needles=4, count=words)
    keys, values = s.meta["keys"], s.meta["values"]
    assert len(set(keys)) == 4
    positions = [s.prompt.index(f"The special magic number for {k} is {v}.") for k, v in zip(keys, values)]
    assert positions == sorted(positions)  # depths 0.2, 0.4, 0.6, 0.8 in order
    assert s.references == [values[keys.index(s.meta["asked"])]]
    assert f"magic number for {s.meta['asked']}?" in s.prompt
    with pytest.raises(ValueError, match="needles must be"):
        tasks.multi_needle(512, seed=0, needles=1)


def test_short_instructions_are_short_and_answerable():
    samples = tasks.make_samples("short", 0, 8, seed=0)
    assert all(words(s.prompt) < 30 for s in samples)
    add = samples[0]
    a, b = (int(w) for w in add.prompt.split("?")[0].split() if w.isdigit())
    assert add.references == [str(a + b)]
    assert {s.meta["kind"] for s in samples} == {"add", "capital", "upper", "weekday"}


def test_continuation_reference_follows_prompt():
    s = tasks.continuation(600, seed=2, count=words)
    assert not s.chat and s.metric == "rouge_l" and s.meta["haystack"] == "prose"
    paragraphs = set(haystack.haystack_units("prose", 2 * 1000 + 900, 64))
    last = s.prompt.split("\n\n")[-1]
    full = f"{last} {s.references[0]}"
    assert any(p.startswith(full) for p in paragraphs)  # the prompt ends mid-paragraph, the reference continues it
    assert 600 - 200 <= words(s.prompt) <= 600


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_samples("qa", 512, 1)
    with pytest.raises(ValueError, match="at least 64"):
        tasks.make_samples("passkey", 10, 1)
    with pytest.raises(ValueError, match="depth"):
        tasks.passkey(512, 1.5, seed=0)
    with pytest.raises(ValueError, match="haystack source"):
        haystack.haystack_units("wiki", 0, 3)


def test_reading_asks_a_fact_stated_once_in_the_paragraph():
    samples = tasks.make_samples("reading", 0, 5, seed=0)
    assert [s.meta["kind"] for s in samples] == ["town", "colour", "pet", "plant", "job"]
    for s in samples:
        paragraph = s.prompt.split("\n\n")[1]
        assert s.chat and s.metric == "contains" and words(s.prompt) < 140
        assert paragraph.count(s.references[0]) == 1  # the answer is in the text, once
        assert s.prompt.endswith("Answer in one word.") and s.prompt.startswith("Read the paragraph")
    colour = samples[1]
    assert colour.references[0] in ("blue", "red", "green", "yellow", "white", "orange")
    assert f"house is painted {colour.references[0]}" in colour.prompt
    assert score("contains", f"The house is {colour.references[0]}.", colour.references) == 1.0


@pytest.mark.parametrize("source", ["prose", "docs", "procedural"])
def test_repeat_copies_one_paragraph_and_cuts_the_last_copy(source):
    s = tasks.repeat(600, seed=1, count=words, source=source)
    parts = s.prompt.split("\n\n")
    paragraph, lead = parts[0], parts[-1]
    assert not s.chat and s.metric == "continues" and s.meta["copies"] == len(parts) - 1 >= 2
    assert all(p == paragraph for p in parts[:-1])  # the same paragraph, again and again
    # The reference is the words that follow the cut (docstring prose may hold double spaces: compare words).
    assert paragraph.split()[: len(lead.split()) + 16] == f"{lead} {s.references[0]}".split()
    assert len(s.references[0].split()) == 16 and len(lead.split()) == len(paragraph.split()) // 3
    assert 600 - words(paragraph) - s.meta["copies"] - 2 <= words(s.prompt) <= 600  # +1 per separator
    assert score("continues", s.references[0], s.references) == 1.0
    assert tasks.repeat(600, seed=1, count=words, source=source).prompt == s.prompt  # deterministic
