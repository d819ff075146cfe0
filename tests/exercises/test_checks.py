"""The course checkers accept the instructor solutions and reject typical mistakes with a helpful message.

The planted mistakes below are written the way a student would write them (not copied from ``mistakes.py``),
so these tests also prove that the diagnosis recognises a mistake however it is spelled.
"""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu import exercises as ex
from refreekv_edu.exercises import solutions as sol
from refreekv_edu.exercises.grading import CheckResult


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_reference_solution_passes(name: str) -> None:
    for seed in (0, 1, 2):
        result = ex.check(name, getattr(sol, name), seed=seed)
        assert result.passed, result.message
        assert result.n_passed == result.n_cases >= 3
        assert "PASSED" in str(result)


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_every_known_mistake_is_rejected_and_named(name: str) -> None:
    exercise = ex.EXERCISES[name]
    assert len(exercise.mistakes) >= 2
    for mistake in exercise.mistakes:
        result = ex.check(name, mistake.fn)
        assert not result.passed, f"{name}: mistake {mistake.name!r} was accepted"
        assert result.failure is not None and result.failure.diagnosis == mistake.name, result.message
        assert mistake.hint in result.message


def _rejected(result: CheckResult, *needles: str) -> str:
    assert isinstance(result, CheckResult)
    assert not result.passed and not bool(result)
    text = result.message
    assert text.startswith(f"FAILED {result.exercise}")
    for field in ("case:", "inputs:", "expected:", "got:", "problem:", "hint:"):
        assert field in text, text
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in:\n{text}"
    return text


# ------------------------------------------------------------------------------------ planted student mistakes
def test_off_by_one_cut_is_explained() -> None:
    def halting_cut(last_attn, order, threshold):
        ratio = rk.halting_curve(last_attn, order)
        return int(np.sum(ratio <= threshold))  # counts the e's instead of taking the last one

    text = _rejected(ex.check_halting_cut(halting_cut), "off by one", "expected 2, got 3")
    assert "'hand'" in text


def test_strict_inequality_cut_is_explained() -> None:
    def halting_cut(last_attn, order, threshold):
        ratio = sol.halting_curve(last_attn, order)
        e = 0
        while e + 1 < len(ratio) and ratio[e + 1] < threshold:
            e += 1
        return e

    _rejected(ex.check_halting_cut(halting_cut), "zero-threshold", "<= threshold")


def test_l1_instead_of_l2_norm_is_explained() -> None:
    def halting_curve(last_attn, order):
        a = np.take_along_axis(last_attn, order, axis=1)
        kept = np.flip(np.cumsum(np.flip(a, axis=1), axis=1), axis=1)  # plain sums: an L1 norm
        big_r = kept.mean(axis=0)
        return (big_r[0] - big_r) / big_r[0]

    _rejected(ex.check_halting_curve(halting_curve), "L1 norm", "L2")


def test_total_minus_prefix_nan_is_explained() -> None:
    def halting_curve(last_attn, order):
        sq = np.take_along_axis(last_attn, order, axis=1) ** 2
        prefix = np.concatenate([np.zeros((sq.shape[0], 1), sq.dtype), np.cumsum(sq, axis=1)[:, :-1]], axis=1)
        tail = sq.sum(axis=1, keepdims=True) - prefix  # goes slightly negative where the true tail is 0
        big_r = np.sqrt(tail).mean(axis=0)
        return (big_r[0] - big_r) / big_r[0]

    with np.errstate(invalid="ignore"):
        text = _rejected(ex.check_halting_curve(halting_curve), "zero-tail", "NaN", "reverse scan")
    assert "total - prefix" in text


def test_total_minus_prefix_in_float64_is_caught_too() -> None:
    def halting_curve(last_attn, order):
        sq = np.take_along_axis(last_attn.astype(np.float64), order, axis=1) ** 2
        tail = sq.sum(axis=1, keepdims=True) - np.cumsum(sq, axis=1) + sq
        big_r = np.sqrt(tail).mean(axis=0)
        return (big_r[0] - big_r) / big_r[0]

    with np.errstate(invalid="ignore"):
        _rejected(ex.check_halting_curve(halting_curve), "NaN")


def test_unprotected_window_is_explained() -> None:
    def kept_positions(order, n_evicted, prompt_len, window):
        return np.sort(order[:, n_evicted:], axis=1)  # forgot the window

    _rejected(ex.check_window_protection(kept_positions), "window is missing", "wrong shape")


def test_interleaved_gqa_grouping_is_explained() -> None:
    def expand_kv(keys, group_size):
        return np.concatenate([keys] * group_size, axis=0)  # 0,1,2,0,1,2 instead of 0,0,0,1,1,1

    def group_scores(scores, group_size):
        hkv = scores.shape[0] // group_size
        return np.stack([scores[j::hkv].sum(axis=0) for j in range(hkv)])

    _rejected(ex.check_gqa_grouping(expand_kv), "interleaved", "h // G", "labelled")
    _rejected(ex.check_gqa_grouping(sol.expand_kv, group_scores), "interleaved", "consecutive")
    assert ex.check_gqa_grouping(sol.expand_kv, sol.group_scores).passed


def test_softmax_without_causal_mask_is_explained() -> None:
    def window_scores(queries, keys, scale, window):
        logits = scale * queries @ keys.transpose(0, 2, 1)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        n = keys.shape[1] - window
        return p[:, :, :n].sum(axis=1), p[:, -1, :n]

    _rejected(ex.check_window_scores(window_scores), "causal mask", "'tiny'")


def test_unstable_sort_is_explained() -> None:
    def rank_candidates(scores):
        return np.argsort(scores, axis=1)  # quicksort: ties come out scrambled

    ties = ex.EXERCISES["rank_candidates"].make_cases(np.random.default_rng(0))[-1].args[0]
    if np.array_equal(rank_candidates(ties), np.argsort(ties, axis=1, kind="stable")):
        pytest.skip("this numpy's default argsort happens to be stable on the tie case")
    _rejected(ex.check_rank_candidates(rank_candidates), "stable", "ties")


def test_unguarded_division_is_explained() -> None:
    def halting_cut(last_attn, order, threshold):
        sq = np.take_along_axis(last_attn, order, axis=1) ** 2
        big_r = np.sqrt(np.flip(np.cumsum(np.flip(sq, 1), 1), 1)).mean(0)
        with np.errstate(invalid="ignore"):
            ratio = (big_r[0] - big_r) / big_r[0]
        return int(np.flatnonzero(ratio <= threshold).max(initial=0))

    _rejected(ex.check_halting_cut(halting_cut), "silent-heads", "R(0) == 0")


# ------------------------------------------------------------------------------------ the grader itself
def test_stub_and_crash_are_reported_not_raised() -> None:
    def stub(last_attn, order):
        raise NotImplementedError

    _rejected(ex.check_halting_curve(stub), "stub", "NotImplementedError")

    def crashes(last_attn, order):
        return last_attn @ order  # shape error

    text = _rejected(ex.check_halting_curve(crashes), "raised")
    assert "line" in text


def test_in_place_mutation_is_reported() -> None:
    def halting_curve(last_attn, order):
        last_attn *= 1.0 + 0.0 * last_attn
        last_attn[:] = np.take_along_axis(last_attn, order, axis=1)  # overwrites the caller's array
        return sol.halting_curve(last_attn, np.broadcast_to(np.arange(order.shape[1]), order.shape).copy())

    _rejected(ex.check_halting_curve(halting_curve), "in place")


def test_wrong_return_type_is_reported() -> None:
    _rejected(ex.check_halting_cut(lambda a, o, t: 2.0), "expected an int")


def test_unknown_exercise_and_non_callable_raise_clearly() -> None:
    with pytest.raises(ValueError, match="exercises:"):
        ex.check("no_such_exercise", sol.halting_cut)
    with pytest.raises(TypeError, match="pass your function itself"):
        ex.check_halting_cut("halting_cut")


def test_raise_if_failed_carries_the_explanation() -> None:
    assert ex.check_halting_cut(sol.halting_cut).raise_if_failed().passed
    with pytest.raises(AssertionError, match="hint:"):
        ex.check_halting_cut(lambda a, o, t: 0).raise_if_failed()


def test_html_repr_is_escaped() -> None:
    html = ex.check_halting_cut(lambda a, o, t: 0)._repr_html_()
    assert html.startswith("<pre") and "&lt;=" in html
