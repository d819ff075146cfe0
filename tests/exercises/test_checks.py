"""The course checkers accept the instructor solutions and reject typical mistakes with a helpful message.

The planted mistakes below are written the way a student would write them (not copied from ``mistakes.py``),
so these tests also prove that the diagnosis recognises a mistake however it is spelled.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu import exercises as ex
from refreekv_edu.exercises import grading
from refreekv_edu.exercises import solutions as sol
from refreekv_edu.exercises.grading import CheckResult

#: The graders of the paper's method added for issue 11: each rejects at least 5 named mistakes.
PAPER_GRADERS = ("candidate_curve", "recency_keep", "model_budget", "decide_layer")


def test_the_paper_graders_name_the_issue_11_mistakes() -> None:
    named = {name: {m.name for m in ex.EXERCISES[name].mistakes} for name in PAPER_GRADERS}
    assert {"sinks-in-norm", "newest-evicted-first"} <= named["candidate_curve"]
    assert {"strict-less", "cut-off-by-one", "sinks-in-norm", "newest-evicted-first"} <= named["recency_keep"]
    assert {"layer-0-pruned", "full-layers-left-out-of-mean"} <= named["model_budget"]
    assert {"layer-0-pruned", "sinks-in-norm", "newest-evicted-first"} <= named["decide_layer"]


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
    assert len(exercise.mistakes) >= (5 if name in PAPER_GRADERS else 2)
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


# ------------------------------------------------------------------------------------ the paper's method, as students write it
def test_sinks_counted_in_the_norm_is_explained() -> None:
    def candidate_curve(last_row, sinks):
        a = last_row[:, ::-1]  # newest first ... then flipped back: the whole row, sinks included, oldest first
        sq = (a * a)[:, ::-1]
        tail = np.cumsum(sq[:, ::-1], axis=1)[:, ::-1]  # tail over ALL positions
        big_r = np.sqrt(tail[:, sinks:] + (sq[:, :sinks].sum(axis=1, keepdims=True))).mean(axis=0)
        return (big_r[0] - big_r) / big_r[0]

    text = _rejected(ex.check_sink_exclusion(candidate_curve), "sinks in the norm", "out of the metric")
    assert "'hand'" in text


def test_newest_evicted_first_is_explained() -> None:
    def recency_keep(last_row, sinks, threshold):
        a = last_row[:, sinks:][:, ::-1]  # evicts from the newest end
        ratio = rk.halting_curve(a, np.broadcast_to(np.arange(a.shape[1]), a.shape))
        e = int(np.flatnonzero(ratio <= threshold)[-1])
        return np.concatenate([np.arange(sinks), np.arange(sinks, last_row.shape[1] - e)])

    _rejected(ex.check_recency_keep(recency_keep), "NEWEST", "oldest first")


def test_strict_less_in_the_halting_rule_is_explained() -> None:
    def recency_keep(last_row, sinks, threshold):
        ratio = sol.candidate_curve(last_row, sinks)
        e = 0
        while e + 1 < len(ratio) and ratio[e + 1] < threshold:
            e += 1
        return np.r_[np.arange(sinks), np.arange(sinks + e, last_row.shape[1])]

    _rejected(ex.check_recency_keep(recency_keep), "zero-threshold", "<= threshold")


def test_cut_off_by_one_is_explained() -> None:
    def recency_keep(last_row, sinks, threshold):
        ratio = sol.candidate_curve(last_row, sinks)
        e = int(np.argmax(ratio > threshold)) if (ratio > threshold).any() else len(ratio)  # first e over T
        return np.r_[np.arange(sinks), np.arange(sinks + e, last_row.shape[1])]

    _rejected(ex.check_recency_keep(recency_keep), "off by one", "'hand'")


def test_layer_0_pruned_is_explained() -> None:
    def model_budget(last_rows, sinks, threshold, full_layers):
        budgets = np.array([len(sol.recency_keep(r, sinks, threshold)) / r.shape[1] for r in last_rows])
        return budgets, budgets.mean()

    _rejected(ex.check_full_layers(model_budget), "layers 0 and 1 were pruned", "Appendix B")

    def decide_layer(queries, keys, threshold, sinks, layer):
        scale = 1 / np.sqrt(keys.shape[2])
        k = np.repeat(keys, queries.shape[0] // keys.shape[0], axis=0)
        logits = scale * np.einsum("hd,hld->hl", queries[:, -1], k)
        p = np.exp(logits - logits.max(1, keepdims=True))
        kept = sol.recency_keep(p / p.sum(1, keepdims=True), sinks, threshold)
        return np.tile(kept, (keys.shape[0], 1))

    result = ex.check_decide_layer(decide_layer)
    text = _rejected(result, "full layers", "'layer-0'")
    # every case runs: only the two full layers are wrong, and the report says which group they are in
    assert "6 of 8 cases passed (basic 3/3, edge 1/3, adversarial 2/2)" in text and "'layer-1' (edge)" in text
    assert result.by_group() == {"basic": (3, 3), "edge": (1, 3), "adversarial": (2, 2)}
    assert result.group_passed("basic") and not result.group_passed("edge")


def test_full_layers_left_out_of_the_mean_is_explained() -> None:
    def model_budget(last_rows, sinks, threshold, full_layers):
        pruned = [
            len(sol.recency_keep(r, sinks, threshold)) / r.shape[1]
            for i, r in enumerate(last_rows)
            if i not in full_layers
        ]
        budgets = np.ones(len(last_rows))
        budgets[[i for i in range(len(last_rows)) if i not in full_layers]] = pruned
        return budgets, float(np.mean(pruned))

    _rejected(ex.check_model_budget(model_budget), "ALL layers", "output [1]")


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


# ------------------------------------------------------------------------------------ untrusted submissions (issue 14)
def test_endless_loop_fails_after_the_time_limit() -> None:
    def halting_cut(last_attn, order, threshold):
        e = 0
        while True:  # forgot e += 1
            pass
        return e

    start = time.monotonic()
    result = ex.check_halting_cut(halting_cut, time_limit=0.5)
    assert time.monotonic() - start < 5
    text = _rejected(result, "did not finish within 0.5 s", "endless loop")
    assert "(nothing: it did not return)" in text


def test_sleeping_submission_is_interrupted_too() -> None:
    start = time.monotonic()
    _rejected(ex.check_halting_cut(lambda a, o, t: time.sleep(60), time_limit=0.3), "did not finish")
    assert time.monotonic() - start < 5


def test_swallowed_timeout_still_fails() -> None:
    def halting_cut(last_attn, order, threshold):
        try:
            while True:
                pass
        except BaseException:  # noqa: BLE001 - a student catching everything
            return 0

    _rejected(ex.check_halting_cut(halting_cut, time_limit=0.3), "did not finish")


def test_time_limit_works_outside_the_main_thread() -> None:
    """The thread fallback (Windows, a grader called from a worker thread) interrupts a pure-Python loop too."""
    box = {}

    def loop(last_attn, order, threshold):
        while True:
            pass

    worker = threading.Thread(target=lambda: box.setdefault("r", ex.check_halting_cut(loop, time_limit=0.3)))
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    _rejected(box["r"], "did not finish")
    assert ex.check_halting_cut(sol.halting_cut).passed  # the grader still works afterwards


def test_alarm_restores_an_outer_timer() -> None:
    import signal

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGALRM timers need POSIX and the main thread")
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert ex.check_halting_cut(sol.halting_cut).passed
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 30.0 and not fired  # someone else's timer (pytest-timeout) is still armed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_sys_exit_does_not_escape_the_grader() -> None:
    def halting_curve(last_attn, order):
        sys.exit("done")

    text = _rejected(ex.check_halting_curve(halting_curve), "sys.exit('done')", "sys.exit()")
    assert grading.EXIT_HINT in text
    _rejected(ex.check_halting_cut(lambda a, o, t: exit()), "sys.exit(None)")


def test_complex_result_is_rejected() -> None:
    def halting_curve(last_attn, order):
        return sol.halting_curve(last_attn, order) + 1j

    _rejected(ex.check_halting_curve(halting_curve), "complex", "real-valued")
    _rejected(ex.check_halting_cut(lambda a, o, t: complex(sol.halting_cut(a, o, t))), "complex")
    text = _rejected(ex.check_halting_curve(lambda a, o: sol.halting_curve(a, o) + 0j), "complex")
    assert "diagnos" not in text  # no known mistake claimed it


def test_string_array_of_the_right_shape_is_rejected_clearly() -> None:
    def halting_curve(last_attn, order):
        return sol.halting_curve(last_attn, order).astype(str)

    text = _rejected(ex.check_halting_curve(halting_curve), "not numbers", "real numbers")
    assert "ValueError" not in text
    _rejected(ex.check_halting_cut(lambda a, o, t: str(sol.halting_cut(a, o, t))), "text ('2')", "str '2'")
    _rejected(
        ex.check_window_scores(lambda q, k, s, w: tuple(x.astype(str) for x in sol.window_scores(q, k, s, w))),
        "output [0]",
        "not numbers",
    )


def test_tiny_in_place_change_is_detected() -> None:
    def candidate_curve(last_row, sinks):
        last_row[:, :sinks] = 0.0  # "remove" the sinks by zeroing them in the caller's array
        return sol.candidate_curve(last_row, sinks)

    text = _rejected(ex.check_candidate_curve(candidate_curve), "changed its input argument #1 (last_row) in place")
    assert grading.MUTATION_HINT in text

    def halting_curve(last_attn, order):
        last_attn += 1e-9  # below the comparison tolerance, still a write into the caller's array
        return sol.halting_curve(last_attn, order)

    _rejected(ex.check_halting_curve(halting_curve), "in place")


def test_solutions_stay_out_of_the_student_namespace() -> None:
    import refreekv_edu.exercises as package

    assert "solutions" not in package.__all__
    assert not hasattr(package, "solutions")  # even though the graders have imported the module
    assert "solutions" not in dir(package)
    from refreekv_edu.exercises import solutions  # instructors import it explicitly

    assert solutions.halting_cut is sol.halting_cut
    assert not hasattr(package, "solutions")


def test_instructor_mode_grades_the_solution_and_says_so() -> None:
    def stub(last_attn, order, threshold):
        raise NotImplementedError

    result = ex.check_halting_cut(stub, instructor=True)
    assert result.passed and "instructor solution was graded" in str(result)
    assert not ex.check_halting_cut(stub)


@pytest.mark.parametrize(
    "path",
    sorted(
        __import__("pathlib").Path(__file__).resolve().parents[2].joinpath("notebooks", "exercises").glob("*.ipynb")
    ),
    ids=lambda p: p.name,
)
def test_exercise_notebooks_do_not_reach_for_the_solutions(path) -> None:
    import json

    source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    for leak in ("ex.solutions", "exercises.solutions", "import solutions", "exercises import solutions"):
        assert leak not in source, f"{path.name} exposes the instructor solutions to the student ({leak})"
    assert "instructor=SOLUTIONS" in source
