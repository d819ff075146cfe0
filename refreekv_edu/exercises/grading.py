"""The grading loop shared by every checker: run a submission on every case, explain the first wrong one.

A checker (see :mod:`refreekv_edu.exercises.checks`) is an :class:`Exercise`: a reference solution, a list of
:class:`Case` s, each in a group (``basic``, ``edge``, ``adversarial``; checked in that order) and a list of
:class:`Mistake` s, the typical wrong answers with a hint each. Every case is run, so a partly right function
shows which groups it gets right (courses give points per group). When a submission fails a case, the grader
runs every known mistake on the first failing one; if one of them gives exactly what the submission gave, its
hint is the diagnosis. Otherwise the case's own hint (what the case is about) is shown.

The submission is untrusted code. :func:`grade` never calls it directly: a *caller* does, and reports a
:class:`~refreekv_edu.exercises.sandbox.Call` of plain data. The default caller runs it in this process under a
time limit (:mod:`~refreekv_edu.exercises.sandbox`); :mod:`~refreekv_edu.exercises.isolation` and
:mod:`~refreekv_edu.exercises.trusted` run it in a child process that is killed at a deadline. After a call
runs out of time the remaining cases are not run (each would cost another time limit) and count as failed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import GROUPS, CaseResult, CheckResult, Failure
from .sandbox import TIME_LIMIT_S, Call, call_submission
from .values import bad_dtype, compare_values, safe_text, same_values, summarize

TIMEOUT_HINT = (
    "an endless loop? Check that every while-loop moves towards its end (e.g. `e += 1`) and stops at the last "
    "candidate; the cases are small, so a correct function finishes in milliseconds."
)
EXIT_HINT = (
    "do not call sys.exit() / exit() / quit() in your function: they stop the whole program (the grader caught it). "
    "Return the answer instead."
)
DTYPE_HINT = (
    "return real numbers: a numpy array of floats (or ints for indices), e.g. np.asarray(x, dtype=np.float32). "
    "Complex values (e.g. from np.sqrt of a complex array, or `+ 1j`) or strings are never a valid answer."
)
MUTATION_HINT = (
    "work on a copy (e.g. x = x.copy() or x = x * 1.0) instead of writing into the arrays you were given: "
    "the caller (the next layer, the next step) still needs them unchanged."
)
CRASH_HINT = (
    "your function stopped the process that ran it (os._exit, a crash inside a C extension, running out of "
    "memory): return the answer instead, and keep the arrays as small as the inputs."
)
LIBRARY_HINT = (
    "write the function yourself: passing the package's own implementation (or the instructor's) earns nothing."
)
NOTEBOOK_HINT = (
    "run your notebook top to bottom (Kernel > Restart and Run All) before you submit it: every cell must run, "
    "the function must keep its name, and no cell may loop or wait at its top level."
)
STUB_HINT = "the function is still the stub: replace `raise NotImplementedError` with your code."
NOT_RUN = "not run: an earlier case ran out of time"

#: ``(args, time_limit) -> Call``: how a grader calls the submission on one case.
Caller = Callable[[tuple[Any, ...], float], Call]


@dataclass
class Case:
    """One graded input.

    Attributes:
        name: short id shown in the report, e.g. ``"ties"``.
        about: one sentence: what this case checks.
        args: positional arguments passed to the submission (and the reference).
        hint: what to look at when this case fails and no known mistake matches.
        group: ``"basic"``, ``"edge"`` or ``"adversarial"`` (see :data:`~refreekv_edu.exercises.results.GROUPS`).
    """

    name: str
    about: str
    args: tuple[Any, ...]
    hint: str = ""
    group: str = "basic"


def grouped(cases: list[Case], edge: Sequence[str] = (), adversarial: Sequence[str] = ()) -> list[Case]:
    """``cases`` with the named ones put in the ``edge`` / ``adversarial`` group (the rest are ``basic``)."""
    names = {c.name for c in cases}
    unknown = (set(edge) | set(adversarial)) - names
    if unknown:
        raise ValueError(f"no case named {sorted(unknown)} (cases: {sorted(names)})")
    for case in cases:
        case.group = "edge" if case.name in edge else "adversarial" if case.name in adversarial else "basic"
    return cases


@dataclass
class Mistake:
    """A typical wrong answer: ``fn`` computes it, ``hint`` says what went wrong and how to fix it."""

    name: str
    fn: Callable[..., Any]
    hint: str


@dataclass
class Exercise:
    """What a checker needs: the reference, the cases and the known mistakes.

    Attributes:
        name: the function the student writes, e.g. ``"halting_curve"``.
        signature: how it is called, e.g. ``"halting_curve(last_attn, order) -> ratio"``.
        reference: the instructor solution.
        make_cases: ``rng -> list[Case]``.
        mistakes: known wrong answers with hints, tried in order.
        compare: ``(expected, got) -> problem or None``; default :func:`~refreekv_edu.exercises.values.compare_values`.
    """

    name: str
    signature: str
    reference: Callable[..., Any]
    make_cases: Callable[[np.random.Generator], list[Case]]
    mistakes: Sequence[Mistake] = ()
    compare: Callable[[Any, Any], str | None] | None = None


def select_cases(exercise: Exercise, seed: int = 0, groups: Sequence[str] | None = None) -> list[Case]:
    """The cases of ``exercise`` at ``seed``, basic first, then edge, then adversarial; only ``groups`` if given."""
    if groups is not None:
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown case group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
    cases = exercise.make_cases(np.random.default_rng(seed))
    rank = {g: i for i, g in enumerate(GROUPS)}
    cases = sorted(cases, key=lambda c: rank.get(c.group, len(GROUPS)))  # stable: the list order within a group
    return [c for c in cases if groups is None or c.group in groups]


def grade(
    exercise: Exercise,
    fn: Callable[..., Any] | None,
    seed: int = 0,
    time_limit: float = TIME_LIMIT_S,
    groups: Sequence[str] | None = None,
    caller: Caller | None = None,
) -> CheckResult:
    """Run the submission on every case of ``exercise`` (positional arguments) and explain the first wrong one.

    Args:
        exercise: what to check.
        fn: the submission (ignored when ``caller`` is given).
        seed: seed of the random cases (the same seed gives the same cases, so a failure can be reproduced).
        time_limit: seconds one call may run before it counts as a failure.
        groups: only the cases of these groups (default: all).
        caller: how to call the submission (default: in this process, :func:`~.sandbox.call_submission`).
    """
    if caller is None:
        if not callable(fn):
            raise TypeError(
                f"pass your function itself, e.g. check_{exercise.name}({exercise.name}), not {type(fn).__name__}"
            )
        caller = _in_process(fn)
    cases = select_cases(exercise, seed, groups)
    verdicts: list[CaseResult] = []
    first: tuple[Case, Any, str, str, Any] | None = None  # (case, expected, problem, hint, got) of the first failure
    wrong_answers: list[tuple[Case, Any]] = []  # cases that returned a wrong value: the diagnosis reads them all
    timed_out = False
    for case in cases:
        expected = exercise.reference(*copy.deepcopy(case.args))
        call = Call("not run") if timed_out else caller(case.args, time_limit)
        timed_out = timed_out or call.status == "timeout"
        problem, hint, wrong_value = _judge(exercise, case, expected, call, time_limit)
        verdicts.append(CaseResult(case.name, case.group, problem is None, problem or ""))
        if wrong_value:
            wrong_answers.append((case, call.value))
        if problem is not None and first is None:
            first = (case, expected, problem, hint, call.value if call.status == "ok" else _NOTHING)
    failure = None
    if first is not None:
        case, expected, problem, hint, got = first
        diagnosis = None
        if wrong_answers and wrong_answers[0][0] is case:
            hint, diagnosis = _diagnose(exercise, wrong_answers)
        failure = _explain(exercise, case, expected, problem, hint, got, diagnosis)
    n_passed = sum(v.passed for v in verdicts)
    return CheckResult(
        exercise.name, failure is None, n_passed, len(cases), failure, [c.name for c in cases], "", verdicts
    )


def _in_process(fn: Callable[..., Any]) -> Caller:
    return lambda args, time_limit: call_submission(fn, args, time_limit)


def _judge(
    exercise: Exercise, case: Case, expected: Any, call: Call, time_limit: float
) -> tuple[str | None, str, bool]:
    """``(problem or None, hint, wrong_value)`` for one call; ``wrong_value``: it returned real numbers that differ."""
    if call.status == "not run":
        return NOT_RUN, TIMEOUT_HINT, False
    if call.status == "timeout":
        return f"did not finish within {time_limit:g} s: the grader stopped it", TIMEOUT_HINT, False
    if call.status == "refused":
        return call.detail, LIBRARY_HINT if "package's own" in call.detail else NOTEBOOK_HINT, False
    if call.status == "crashed":
        return f"the process running your function died ({call.detail})", CRASH_HINT, False
    if call.status == "raised":
        if call.error_type == "NotImplementedError":
            return "raised NotImplementedError", STUB_HINT, False
        if call.error_type == "SystemExit":
            return f"called sys.exit({call.error_text}) (or exit()/quit()): the grader caught it", EXIT_HINT, False
        where = f" ({call.error_line})" if call.error_line else ""
        return f"raised {call.error_type}: {call.error_text}{where}", _hint_for_error(call, case), False
    if call.mutated is not None:
        names = _param_names(exercise.signature, len(case.args))
        problem = f"your function changed its input argument #{call.mutated + 1} ({names[call.mutated]}) in place"
        return problem, MUTATION_HINT, False
    got = call.value
    try:
        problem = bad_dtype(got)
        if problem:
            return problem, DTYPE_HINT, False
        problem = (exercise.compare or compare_values)(expected, got)
    except BaseException as exc:  # noqa: BLE001 - an answer that breaks the comparison is a wrong answer
        return f"the grader could not read your answer ({safe_text(type(exc).__name__)})", DTYPE_HINT, False
    if problem is None:
        return None, "", False
    return problem, "", True


def _diagnose(exercise: Exercise, wrong: list[tuple[Case, Any]]) -> tuple[str, str | None]:
    """The hint of the known mistake that reproduces the submission's wrong answers, and its name.

    A mistake that gives exactly the submission's output on every wrongly answered case wins; failing that,
    the first that matches the first wrong case (two mistakes can agree on one case: both give NaN on a silent
    head, but only ``total - prefix`` also breaks the zero tail).
    """
    matches = [[_reproduces(m, case, got) for case, got in wrong] for m in exercise.mistakes]
    for want_all in (True, False):
        for mistake, hits in zip(exercise.mistakes, matches):
            if all(hits) if want_all else hits[0]:
                return mistake.hint, mistake.name
    case = wrong[0][0]
    return (
        case.hint or "compare your code with the definition in the exercise text, line by line, on this small case."
    ), None


def _reproduces(mistake: Mistake, case: Case, got: Any) -> bool:
    try:
        return same_values(mistake.fn(*copy.deepcopy(case.args)), got)
    except Exception:  # noqa: BLE001 - a mistake that crashes on this case just does not match
        return False


def _param_names(signature: str, count: int) -> list[str]:
    """``"f(a, b) -> c"`` -> ``["a", "b"]`` (falls back to ``arg1, arg2, ...``)."""
    inside = signature.partition("(")[2].partition(")")[0]
    names = [p.strip() for p in inside.split(",") if p.strip()]
    return names if len(names) == count else [f"arg{j + 1}" for j in range(count)]


def _hint_for_error(call: Call, case: Case) -> str:
    if call.detail == "shape-like" and ("shape" in call.error_text or "broadcast" in call.error_text):
        return "a shape mismatch: print the .shape of every intermediate array and compare with the shapes in the docstring."
    return case.hint or "read the error above; the case's inputs are listed so you can reproduce it."


_NOTHING = object()  # the submission returned nothing (it raised, exited or timed out)


def _explain(
    exercise: Exercise, case: Case, expected: Any, problem: str, hint: str, got: Any, diagnosis: str | None
) -> Failure:
    names = _param_names(exercise.signature, len(case.args))
    inputs = "\n".join(f"{name} = {summarize(a)}" for name, a in zip(names, case.args))
    return Failure(
        case=case.name,
        about=case.about,
        inputs=f"{exercise.signature}\n{inputs}",
        expected=summarize(expected),
        got="(nothing: it did not return)" if got is _NOTHING else summarize(got),
        problem=problem,
        hint=hint,
        diagnosis=diagnosis,
        group=case.group,
    )
