"""Grading that the submission cannot switch off (issue 18): case groups, hostile values, and the child process.

Every hostile submission of issue 18 is here, graded in a forked child (:func:`grade_isolated`): a cleared timer
with an ignored ``SIGALRM``, one long C call, ``os._exit``, a segfault, a patched grader, exceptions and return
values whose ``__str__``/``__repr__`` raise. Each must fail with a message, within the time limit plus the grace,
while a correct function passes and a function that is wrong on one case loses exactly that case.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from refreekv_edu import exercises as ex
from refreekv_edu.exercises import grading, wire
from refreekv_edu.exercises import solutions as sol
from refreekv_edu.exercises.grading import select_cases
from refreekv_edu.exercises.isolation import GRACE_S, grade_isolated

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="process isolation needs os.fork (POSIX)")


def _copy_of(name: str):
    """The instructor solution as the student's own function (its module is not the package's)."""
    reference = getattr(sol, name)

    def mine(*args):
        return reference(*args)

    mine.__module__ = "__main__"
    return mine


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_every_exercise_has_every_group(name: str) -> None:
    cases = select_cases(ex.EXERCISES[name], seed=0)
    assert {c.group for c in cases} == set(ex.GROUPS)
    ranks = [ex.GROUPS.index(c.group) for c in cases]
    assert ranks == sorted(ranks)  # checked basic first, then edge, then adversarial
    for group in ex.GROUPS:
        only = ex.check(name, getattr(sol, name), groups=[group])
        assert only.passed and set(only.by_group()) == {group}


def test_every_case_is_reported_and_counted() -> None:
    def halting_cut(last_attn, order, threshold):
        if last_attn.shape[1] == 1:  # wrong only on the one-candidate edge case
            return 1
        return sol.halting_cut(last_attn, order, threshold)

    result = ex.check_halting_cut(halting_cut)
    assert not result and result.n_passed == result.n_cases - 1
    assert [r.name for r in result.case_results if not r.passed] == ["one-candidate"]
    assert result.group_passed("basic") and not result.group_passed("edge") and result.group_passed("adversarial")
    assert result.failure.case == "one-candidate" and result.failure.group == "edge"
    with pytest.raises(ValueError, match="unknown case group"):
        ex.check_halting_cut(halting_cut, groups=["hidden"])


class Hostile:
    """A return value that breaks every way of looking at it."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    __str__ = __repr__

    def __array__(self, *args, **kwargs):
        raise RuntimeError("array")

    def __len__(self) -> int:
        raise RuntimeError("len")


class HostileError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str")


def _hostile_error(*args):
    raise HostileError


def test_hostile_str_and_repr_do_not_crash_the_in_process_grader() -> None:
    result = ex.check_halting_cut(lambda a, o, t: Hostile())
    assert not result and "Hostile" in result.message
    result = ex.check_halting_cut(_hostile_error)
    assert not result and "raised HostileError: <a HostileError whose str() raised>" in result.message


@pytest.mark.parametrize("submission", [lambda a, o, t: Hostile(), _hostile_error], ids=["value", "exception"])
def test_hostile_str_and_repr_in_the_child(submission) -> None:
    result = grade_isolated("halting_cut", submission)
    assert not result and result.n_passed == 0 and "Hostile" in result.message


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_every_exercise_solution_passes_in_the_child(name: str) -> None:
    """Every case's inputs cross the pipe intact (ex01's scale once arrived as "np.float64(...)" and killed the
    child): the instructor solution, as the student's own function, passes everything at two seeds."""
    for seed in (0, 20261207):
        result = grade_isolated(name, _copy_of(name), seed=seed)
        assert result.passed, result.message


def test_numpy_scalars_cross_the_wire_as_numbers() -> None:
    value = (np.float64(0.7071067811865476), np.float32(0.5), np.int64(-3), np.complex128(1 - 2j), np.bool_(True))
    decoded = wire.decode(*_parts(wire.encode(value)))
    assert decoded == (0.7071067811865476, 0.5, -3, 1 - 2j, True)
    assert [type(v) for v in decoded] == [float, float, int, complex, bool]


def test_a_correct_copy_passes_in_the_child_and_the_package_is_refused() -> None:
    assert grade_isolated("halting_curve", _copy_of("halting_curve")).passed
    refused = grade_isolated("halting_curve", sol.halting_curve)
    assert not refused and refused.n_passed == 0 and "the package's own function" in refused.message


def test_a_patched_grader_in_the_child_changes_nothing() -> None:
    def halting_cut(last_attn, order, threshold):
        grading.compare_values = lambda *args, **kwargs: None  # the classic cheat: make every comparison pass
        grading.same_values = lambda *args: True
        return 0

    result = grade_isolated("halting_cut", halting_cut)
    assert not result and result.failure.problem == "expected 2, got 0 (off by -2)"
    assert grading.compare_values is not None and grading.compare_values.__module__.endswith("values")


def test_a_cleared_timer_and_an_ignored_alarm_are_killed_at_the_deadline() -> None:
    def halting_cut(last_attn, order, threshold):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass

    start = time.monotonic()
    result = grade_isolated("halting_cut", halting_cut, time_limit=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + GRACE_S + 2.0, elapsed
    assert not result and "did not finish within 0.5 s" in result.message
    assert {r.problem for r in result.case_results[1:]} == {grading.NOT_RUN}


def test_one_long_c_call_is_stopped_at_the_time_limit() -> None:
    def halting_cut(last_attn, order, threshold):
        np.linalg.svd(np.random.default_rng(0).random((2500, 2500)))  # one C call of many seconds
        return 0

    start = time.monotonic()
    result = grade_isolated("halting_cut", halting_cut, time_limit=0.5)
    assert time.monotonic() - start < 0.5 + GRACE_S + 2.0
    assert not result and "did not finish within 0.5 s" in result.message


@pytest.mark.parametrize("how", ["os._exit", "segfault"])
def test_a_dying_child_fails_one_case_and_the_next_runs(how: str) -> None:
    def halting_cut(last_attn, order, threshold):
        if last_attn.shape[1] == 1:  # dies on the one-candidate case only; right everywhere else
            if how == "os._exit":
                os._exit(3)
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        return sol.halting_cut(last_attn, order, threshold)

    halting_cut.__module__ = "__main__"
    result = grade_isolated("halting_cut", halting_cut)
    failed = [r for r in result.case_results if not r.passed]
    assert [r.name for r in failed] == ["one-candidate"] and result.n_passed == result.n_cases - 1
    expected = "exited with status 3" if how == "os._exit" else "killed by signal 11"
    assert expected in failed[0].problem and grading.CRASH_HINT in result.message


def test_the_wire_refuses_garbage_and_pickles() -> None:
    read, write = os.pipe()
    try:
        os.write(write, (2**40).to_bytes(8, "big"))  # a header length far above the limit
        with pytest.raises(wire.WireError, match="at most"):
            wire.receive(read, time.monotonic() + 1)
        with pytest.raises(wire.WireError, match="deadline"):
            wire.receive(read, time.monotonic() + 0.2)  # nothing more arrives
    finally:
        os.close(read)
        os.close(write)
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(wire.WireError):
        wire.decode(b'{"array": "a0"}', buffer.getvalue())
    value = (np.arange(3), 2, 1.5, "x", 1j, None, [np.zeros((2, 2), np.complex64)])
    decoded = wire.decode(*_parts(wire.encode(value)))
    assert decoded[1:6] == value[1:6] and np.array_equal(decoded[0], value[0]) and decoded[6][0].dtype == np.complex64


def _parts(message: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(message[:8], "big")
    return message[8 : 8 + n], message[16 + n :]
