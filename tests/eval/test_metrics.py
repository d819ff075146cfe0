"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refreekv_edu.eval import metrics as m


def test_normalize_answer_drops_case_punctuation_articles():
    assert m.normalize_answer("The  Cat, sat on a MAT!") == "cat sat on mat"


def test_qa_f1_hand_computed():
    # pred {cat, sat} vs ref {cat, sat, down}: precision 1, recall 2/3 -> F1 = 0.8
    assert m.qa_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # best over references
    assert m.qa_f1("Paris", ["London", "paris."]) == 1.0
    assert m.qa_f1("blue", "red") == 0.0
    # repeated tokens count with multiplicity: pred [a1, a1, b] vs ref [a1, b, b]: overlap 2, P = R = 2/3
    assert m.qa_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_lcs_and_rouge_l_hand_computed():
    assert m.lcs_length("a b c d e".split(), "a c e f".split()) == 3
    # pred 5 words, ref 4 words, LCS 3: P = 3/5, R = 3/4, F = 2PR/(P+R) = 2/3
    assert m.rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m.rouge_l("same words here", "Same words, here.") == pytest.approx(1.0)
    assert m.rouge_l("", "anything") == 0.0


def test_exact_and_contains():
    assert m.exact_match("The answer.", "answer") == 1.0
    assert m.exact_match("an answer here", "answer") == 0.0
    assert m.contains_answer("The pass key is 48213.", "48213") == 1.0
    assert m.contains_answer("I do not know", "48213") == 0.0
    assert m.contains_answer("apple 1 and river 2", ["1", "2", "3", "4"]) == 0.5


def test_gsm8k():
    assert m.gsm8k_reference("12 + 15 = 27\n#### 1,027") == "1027"
    assert m.gsm8k_accuracy("so 3 + 4 = 7. The answer is 7.", "#### 7") == 1.0
    assert m.gsm8k_accuracy("7 apples, then 8", "7") == 0.0  # the *last* number counts
    assert m.gsm8k_accuracy("The answer is 30.0", ["30"]) == 1.0
    assert m.gsm8k_accuracy("no number", "5") == 0.0
    with pytest.raises(ValueError, match="####"):
        m.gsm8k_reference("the answer is 5")


def test_classification_count_retrieval_code():
    classes = ["Abbreviation", "City", "Country"]
    assert m.classification_accuracy("Type: City", ["City"], classes) == 1.0
    assert m.classification_accuracy("City or Country", ["City"], classes) == 0.5
    assert m.classification_accuracy("no idea", ["City"], classes) == 0.0
    assert m.count_score("There are 12 paragraphs, not 13", ["12"]) == 0.5
    assert m.retrieval_score("Paragraph 3", ["Paragraph 3"]) == 1.0
    assert m.retrieval_score("Paragraph 4", ["Paragraph 3"]) == 0.0
    assert m.code_similarity("# comment\nx = 1\n", "x = 1") == 1.0


def test_truthfulqa_rouge_acc():
    assert m.truthfulqa_rouge_acc("Nothing happens to you", ["Nothing happens"], ["You get arthritis"]) == 1.0
    assert m.truthfulqa_rouge_acc("You get arthritis", ["Nothing happens"], ["You get arthritis"]) == 0.0


def test_score_dispatch_and_unknown():
    assert m.score("qa_f1", "cat", ["cat"]) == 1.0
    assert m.score("truthfulqa_rouge_acc", "nothing happens", ["nothing happens"], incorrect=["you die"]) == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        m.score("bleu", "a", ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        m.qa_f1("a", [])


def test_token_and_prefix_agreement():
    ref = [1, 2, 3, 4]
    assert m.token_agreement([1, 2, 3, 4], ref) == 1.0
    assert m.token_agreement([1, 9, 3, 4], ref) == 0.75
    assert m.prefix_agreement([1, 9, 3, 4], ref) == 0.25
    assert m.token_agreement([1, 2], ref) == 0.5  # a shorter output misses the rest
    assert m.token_agreement([5], []) == 1.0


def test_first_token_kl_matches_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    p, q = np.exp(a) / np.exp(a).sum(), np.exp(b) / np.exp(b).sum()
    assert m.first_token_kl(a, b) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    assert m.first_token_kl(a, a + 3.0) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    # two-token case by hand: p = (1/2, 1/2), q = (e/(1+e), 1/(1+e))
    e = math.e
    expected = 0.5 * math.log(0.5 / (e / (1 + e))) + 0.5 * math.log(0.5 / (1 / (1 + e)))
    assert m.first_token_kl([0.0, 0.0], [1.0, 0.0]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="vocabulary"):
        m.first_token_kl(np.zeros(3), np.zeros(4))


def test_continues_counts_words_that_follow_the_reference():
    ref = ["keys and their counts are stored as values"]
    assert m.continues("keys and their counts", ref) == 1.0
    assert m.continues(" Keys, and their coun", ref) == 1.0  # the last word may be cut by the decode length
    assert m.continues("keys and the counts are", ref) == pytest.approx(2 / 5)  # stops at the first wrong word
    assert m.continues("values keys and", ref) == 0.0 and m.continues("", ref) == 0.0
    assert m.continues("a b", ["x y", "a b c"]) == 1.0  # the best reference
    assert m.score("continues", "keys and", ref) == 1.0
