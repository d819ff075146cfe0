"""Scores: how good an answer is (task metrics) and how close a compressed run stays to the full cache (fidelity).

Task metrics take a prediction string and one or more reference strings and return a float in ``[0, 1]``:

- :func:`qa_f1`: token-level F1 after normalisation (lowercase, no punctuation, no articles), the
  SQuAD/LongBench/CoQA convention; the best over several references.
- :func:`rouge_l`: ROUGE-L F-measure from the longest common subsequence of words.
- :func:`exact_match`, :func:`contains_answer`: strict and lenient string matches.
- :func:`continues`: the share of the prediction that continues a reference word for word (copying tasks).
- :func:`gsm8k_accuracy`: the last number in the prediction equals the reference's ``#### <n>`` answer.
- :func:`truthfulqa_rouge_acc`: 1 when the prediction is closer (ROUGE-L) to a true answer than to any false one.

Fidelity metrics compare a run with the full-cache run of the same prompt:

- :func:`token_agreement`: share of the reference's greedy tokens reproduced position by position.
- :func:`prefix_agreement`: share of the reference reproduced before the first divergence.
- :func:`first_token_kl`: ``KL(p_full || p_method)`` of the first decoded token's distribution, in nats.

Everything here is numpy + standard library.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _as_list(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference answer is needed to score a prediction")
    return refs


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, squeeze whitespace (the SQuAD convention)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1_tokens(pred: list[str], ref: list[str]) -> float:
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, references: str | Sequence[str]) -> float:
    """Best token-level F1 of ``prediction`` against any reference, after :func:`normalize_answer`.

    Example: ``qa_f1("the cat sat", "a cat sat down")`` has 2 common words, precision 2/2, recall 2/3 -> 0.8.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in _as_list(references):
        ref_tokens = normalize_answer(ref).split()
        if not pred and not ref_tokens:
            return 1.0
        best = max(best, _f1_tokens(pred, ref_tokens))
    return best


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len(a) len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """Best ROUGE-L F-measure (beta = 1) of ``prediction`` against any reference, on lowercased words.

    ``precision = LCS / len(prediction words)``, ``recall = LCS / len(reference words)``.
    """
    pred = re.findall(r"\w+", prediction.lower())
    best = 0.0
    for ref in _as_list(references):
        ref_tokens = re.findall(r"\w+", ref.lower())
        lcs = lcs_length(pred, ref_tokens)
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref_tokens)
            best = max(best, 2 * p * r / (p + r))
    return best


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _as_list(references)))


def contains_answer(prediction: str, references: str | Sequence[str]) -> float:
    """Share of the references found (case-insensitively) inside the prediction.

    One reference: 1.0 or 0.0 (a passkey is either in the answer or not). Several: the share retrieved
    (multi-needle recall).
    """
    refs = _as_list(references)
    low = prediction.lower()
    return sum(ref.lower() in low for ref in refs) / len(refs)


def continues(prediction: str, references: str | Sequence[str]) -> float:
    """Share of the prediction's words that continue a reference word for word from its start (best reference).

    For copying tasks: ``1.0`` means every word written so far is the true continuation. A last word cut off by
    the decode length counts when it is a prefix of the reference's word there. Words are compared after
    :func:`normalize_answer`; an empty prediction scores ``0.0``.
    """
    pred = prediction.split()
    if not pred:
        return 0.0
    best = 0.0
    for ref in _as_list(references):
        ref_words = [normalize_answer(w) for w in ref.split()]
        good = 0
        for i, word in enumerate(pred[: len(ref_words)]):
            w = normalize_answer(word)
            last = i == len(pred) - 1
            if w == ref_words[i] or (last and w and ref_words[i].startswith(w)):
                good += 1
            else:
                break
        best = max(best, good / min(len(pred), len(ref_words)))
    return best


def classification_accuracy(prediction: str, references: str | Sequence[str], all_classes: Sequence[str] = ()) -> float:
    """LongBench-style classification (e.g. TREC): the longest class name mentioned in the prediction must be a reference.

    Without ``all_classes`` it falls back to :func:`contains_answer` over the references.
    """
    refs = _as_list(references)
    mentioned = [c for c in all_classes if c in prediction]
    if not all_classes:
        return float(contains_answer(prediction, refs) > 0)
    if not mentioned:
        return 0.0
    # A longer class name that contains a shorter one ("abbreviation" vs "abb") wins.
    mentioned = [c for c in mentioned if not any(c != o and c in o for o in mentioned)]
    return sum(c in refs for c in mentioned) / len(mentioned)


def numbers_in(text: str) -> list[str]:
    """Every number in ``text`` as a canonical string (commas dropped, ``12.0`` -> ``12``)."""
    out = []
    for raw in _NUMBER.findall(text):
        value = raw.replace(",", "")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        out.append(value)
    return out


def gsm8k_reference(answer: str) -> str:
    """The final numeric answer of a GSM8K solution (the text after ``####``)."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer ends with '#### <number>'; this one has no '####' marker")
    nums = numbers_in(answer.split("####")[-1])
    if not nums:
        raise ValueError(f"no number after '####' in GSM8K answer {answer[-40:]!r}")
    return nums[0]


def gsm8k_accuracy(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the last number in ``prediction`` equals the reference number (a bare number or a ``#### n`` solution)."""
    nums = numbers_in(prediction)
    if not nums:
        return 0.0
    targets = {gsm8k_reference(r) if "####" in r else numbers_in(r)[0] for r in _as_list(references)}
    return float(nums[-1] in targets)


def truthfulqa_rouge_acc(prediction: str, correct: Sequence[str], incorrect: Sequence[str]) -> float:
    """1.0 when the best ROUGE-L against the true answers beats the best against the false ones."""
    return float(rouge_l(prediction, correct) > rouge_l(prediction, incorrect))


def count_score(prediction: str, references: str | Sequence[str]) -> float:
    """LongBench ``passage_count``: share of the numbers in the prediction that equal the reference count."""
    nums = numbers_in(prediction)
    if not nums:
        return 0.0
    target = {str(r).strip() for r in _as_list(references)}
    return sum(n in target for n in nums) / len(nums)


def retrieval_score(prediction: str, references: str | Sequence[str]) -> float:
    """LongBench ``passage_retrieval``: share of the paragraph numbers in the prediction that are the right one.

    References look like ``"Paragraph 12"``.
    """
    targets = {numbers_in(r)[0] for r in _as_list(references) if numbers_in(r)}
    nums = numbers_in(prediction)
    if not nums:
        return 0.0
    return sum(n in targets for n in nums) / len(nums)


def code_similarity(prediction: str, references: str | Sequence[str]) -> float:
    """LongBench ``lcc``/``repobench``: character similarity of the first non-comment line of the prediction.

    LongBench uses fuzzywuzzy's ratio; :class:`difflib.SequenceMatcher` gives the same kind of ratio
    (``2 * matches / total length``) from the standard library.
    """
    import difflib

    lines = [ln for ln in prediction.lstrip("\n").split("\n") if ln.strip() and not ln.lstrip().startswith(("#", "//", "`"))]
    first = lines[0] if lines else ""
    return max(difflib.SequenceMatcher(None, first, ref).ratio() for ref in _as_list(references))


#: Metric name -> function(prediction, references) -> float in [0, 1].
METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1,
    "rouge_l": rouge_l,
    "exact_match": exact_match,
    "contains": contains_answer,
    "continues": continues,
    "classification": classification_accuracy,
    "gsm8k_accuracy": gsm8k_accuracy,
    "count": count_score,
    "retrieval": retrieval_score,
    "code_sim": code_similarity,
    "truthfulqa_rouge_acc": truthfulqa_rouge_acc,
}


def score(metric: str, prediction: str, references: Sequence[str], **extra: object) -> float:
    """Apply the metric called ``metric``; ``extra`` carries metric-specific fields (``all_classes``, ``incorrect``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    if metric == "truthfulqa_rouge_acc":
        return truthfulqa_rouge_acc(prediction, references, extra.get("incorrect", ()))  # type: ignore[arg-type]
    if metric == "classification":
        return classification_accuracy(prediction, references, extra.get("all_classes", ()) or ())  # type: ignore[arg-type]
    return METRICS[metric](prediction, references)


# ---------------------------------------------------------------------------------------------- fidelity
def token_agreement(tokens: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference's tokens reproduced at the same position (``1.0`` for an empty reference)."""
    if not reference:
        return 1.0
    same = sum(a == b for a, b in zip(tokens, reference))
    return same / len(reference)


def prefix_agreement(tokens: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference reproduced before the first differing token (greedy decoding never re-converges by design)."""
    if not reference:
        return 1.0
    n = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        n += 1
    return n / len(reference)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable ``log softmax`` of a ``(vocab,)`` vector, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def first_token_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """``KL(p_ref || p)`` in nats between the first-token distributions given as ``(vocab,)`` logits.

    Zero when the compressed cache changes nothing the next-token distribution can see.
    """
    ref = np.asarray(reference_logits).reshape(-1)
    cur = np.asarray(logits).reshape(-1)
    if ref.shape != cur.shape:
        raise ValueError(f"logits must have the same vocabulary size, got {ref.shape[0]} and {cur.shape[0]}")
    lp, lq = log_softmax(ref), log_softmax(cur)
    return float(max(0.0, np.sum(np.exp(lp) * (lp - lq))))
