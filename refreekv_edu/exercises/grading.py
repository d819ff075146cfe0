"""The grading loop shared by every checker: run a submission on cases, stop at the first wrong one, explain it.

A checker (see :mod:`refreekv_edu.exercises.checks`) is an :class:`Exercise`: a reference solution, a list of
:class:`Case` s (small and readable first, then random, then traps) and a list of :class:`Mistake` s, the typical
wrong answers with a hint each. When a submission fails a case, the grader runs every known mistake on that case;
if one of them gives exactly what the submission gave, its hint is the diagnosis. Otherwise the case's own hint
(what the case is about) is shown.

The submission is untrusted code, so the loop guards against it (:func:`run_submission`): each call runs under a
time limit (:data:`TIME_LIMIT_S`; an endless loop fails with a message instead of hanging the notebook),
``sys.exit()`` and any other exception are reported as a failure, an answer that is complex or not numbers at
all (strings, objects) fails with a clear message, and so does a submission that writes into its input arrays.
"""

from __future__ import annotations

import contextvars
import copy
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Seconds one call of a submission may run (every case is small: a correct answer takes milliseconds).
TIME_LIMIT_S = 5.0

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


@dataclass
class Case:
    """One graded input.

    Attributes:
        name: short id shown in the report, e.g. ``"ties"``.
        about: one sentence: what this case checks.
        args: positional arguments passed to the submission (and the reference).
        hint: what to look at when this case fails and no known mistake matches.
    """

    name: str
    about: str
    args: tuple[Any, ...]
    hint: str = ""


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
        compare: ``(expected, got) -> problem or None``; default :func:`compare_values`.
    """

    name: str
    signature: str
    reference: Callable[..., Any]
    make_cases: Callable[[np.random.Generator], list[Case]]
    mistakes: Sequence[Mistake] = ()
    compare: Callable[[Any, Any], str | None] | None = None


@dataclass
class Failure:
    """The first case a submission got wrong, explained."""

    case: str
    about: str
    inputs: str
    expected: str
    got: str
    problem: str
    hint: str
    diagnosis: str | None = None  # name of the known mistake that matched, if any


@dataclass
class CheckResult:
    """The outcome of a checker. Truthy when every case passed; its text explains the first failure.

    Attributes:
        exercise: the function graded.
        passed: True when every case passed.
        n_passed: cases passed before the first failure (all of them when ``passed``).
        n_cases: cases in the checker.
        failure: the first failing case explained (``None`` when passed).
        cases: names of the cases, in the order they are checked.
    """

    exercise: str
    passed: bool
    n_passed: int
    n_cases: int
    failure: Failure | None = None
    cases: list[str] = field(default_factory=list)
    note: str = ""  # e.g. "the instructor solution was graded, not yours"

    def __bool__(self) -> bool:
        return self.passed

    @property
    def message(self) -> str:
        """The full explanation, as printed."""
        if self.passed:
            note = f" ({self.note})" if self.note else ""
            return f"PASSED {self.exercise}{note}: all {self.n_cases} cases correct ({', '.join(self.cases)})."
        f = self.failure
        assert f is not None
        lines = [
            f"FAILED {self.exercise}: {self.n_passed} of {self.n_cases} cases passed; the first wrong one is {f.case!r}.",
            f"  case:     {f.about}",
            f"  inputs:   {_indent(f.inputs)}",
            f"  expected: {_indent(f.expected)}",
            f"  got:      {_indent(f.got)}",
            f"  problem:  {_indent(f.problem)}",
            f"  hint:     {_indent(f.hint)}",
        ]
        return "\n".join(lines)

    def raise_if_failed(self) -> CheckResult:
        """Raise an AssertionError carrying the explanation when the submission failed (for CI); else return self."""
        if not self.passed:
            raise AssertionError(self.message)
        return self

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        import html

        colour = "#1a7f37" if self.passed else "#cf222e"
        return f'<pre style="border-left: 4px solid {colour}; padding-left: 8px">{html.escape(self.message)}</pre>'


def _indent(text: str) -> str:
    return text.replace("\n", "\n            ")


# ---------------------------------------------------------------------------------------------- describing values
def summarize(x: Any, max_items: int = 24) -> str:
    """A short, readable description of a value: shape, dtype and (if small) the values themselves.

    Never raises: whatever a submission returns (strings, complex numbers, odd objects) can be described.
    """
    try:
        return _summarize(x, max_items)
    except Exception:  # noqa: BLE001 - a description must not crash the report
        return f"{type(x).__name__}: {x!r}"[:200]


def _summarize(x: Any, max_items: int) -> str:
    if isinstance(x, tuple):
        return "(" + ",\n ".join(_summarize(v, max_items) for v in x) + ")"
    if isinstance(x, (bool, np.bool_)):
        return repr(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x)} (int)"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g} (float)"
    if x is None:
        return "None"
    if isinstance(x, (str, bytes)):
        return f"{type(x).__name__} {x!r}"[:200]
    arr = _as_array(x)
    if arr is None:
        return f"{type(x).__name__}: {x!r}"[:200]
    head = f"array shape {tuple(arr.shape)} {arr.dtype}"
    if arr.size == 0:
        return head + " (empty)"
    with np.printoptions(precision=4, suppress=True, threshold=max_items, edgeitems=3, linewidth=100):
        if arr.size <= max_items:
            return f"{head} {np.array2string(arr, separator=', ')}"
        first = arr.reshape(-1, arr.shape[-1])[0, :8] if arr.ndim >= 2 else arr[:8]
        where = "first row" if arr.ndim >= 2 else "values"
        start = f", {where} starts {np.array2string(first, separator=', ')[:-1]}, ...]"
        if arr.dtype.kind == "f":
            finite = arr[np.isfinite(arr)]
            rng = f"min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else "no finite values"
            return f"{head}, {rng}{start}"
        if arr.dtype.kind in "biu":
            return f"{head}, min {arr.min()}, max {arr.max()}{start}"
        return f"{head}{start}"


def _as_array(x: Any) -> np.ndarray | None:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001
        return None
    return None if arr.dtype == object else arr


# ---------------------------------------------------------------------------------------------- comparing values
def compare_values(expected: Any, got: Any, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    """``None`` when ``got`` matches ``expected``, else one sentence that says what differs and where.

    Tuples are compared element by element; integers exactly; floats with ``rtol``/``atol``. Complex values and
    non-numbers (strings, objects) never match, with a sentence that says so.
    """
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            what = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            return f"expected a tuple of {len(expected)} arrays, got {what}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = compare_values(e, g, rtol, atol)
            if problem:
                return f"output [{i}]: {problem}"
        return None
    if isinstance(expected, (int, np.integer)):
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            if isinstance(got, np.ndarray) and got.size == 1 and got.dtype.kind in "iu":
                got = int(got)
            else:
                return f"expected an int, got {type(got).__name__} {got!r}"
        return (
            None
            if int(got) == int(expected)
            else f"expected {int(expected)}, got {int(got)} (off by {int(got) - int(expected):+d})"
        )
    exp = np.asarray(expected)
    arr = _as_array(got)
    if arr is None:
        return f"expected an array of shape {exp.shape}, got {type(got).__name__}"
    kind = bad_dtype(arr)
    if kind:
        return kind
    if arr.shape != exp.shape:
        return f"wrong shape: expected {exp.shape}, got {arr.shape}"
    if exp.dtype.kind in "iu":
        if arr.dtype.kind not in "iu":
            return f"expected integer indices, got dtype {arr.dtype}"
        bad = np.argwhere(arr != exp)
        if bad.size:
            idx = tuple(int(i) for i in bad[0])
            return f"{len(bad)} of {exp.size} entries differ; first at index {idx}: expected {exp[idx]}, got {arr[idx]}"
        return None
    arr = arr.astype(np.float64)
    if np.isnan(arr).any() and not np.isnan(exp).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
        return f"your output contains NaN ({int(np.isnan(arr).sum())} entries; first at index {idx})"
    if np.isinf(arr).any() and not np.isinf(exp).any():
        return "your output contains inf"
    close = np.isclose(arr, exp, rtol=rtol, atol=atol)
    if not close.all():
        idx = tuple(int(i) for i in np.argwhere(~close)[0])
        return (
            f"{int((~close).sum())} of {exp.size} entries differ; first at index {idx}: "
            f"expected {float(exp[idx]):.6g}, got {float(arr[idx]):.6g}"
        )
    return None


def bad_dtype(x: Any) -> str | None:
    """``None`` when ``x`` (an array, a number, or a tuple of them) holds real numbers, else what is wrong with it."""
    if isinstance(x, (tuple, list)) and any(isinstance(v, (tuple, list, np.ndarray)) for v in x):
        for i, v in enumerate(x):
            problem = bad_dtype(v)
            if problem:
                return f"output [{i}]: {problem}"
        return None
    if isinstance(x, (complex, np.complexfloating)):
        return f"your output is a complex number ({x!r}); the algorithm is real-valued"
    if isinstance(x, (str, bytes)):
        return f"your output is text ({x!r}), not a number or an array of numbers"
    arr = _as_array(x)
    if arr is None:
        return None  # not array-like at all: the comparison says what was expected instead
    if arr.dtype.kind == "c":
        return (
            f"your output is complex (dtype {arr.dtype}); the algorithm is real-valued, imaginary parts are never right"
        )
    if arr.dtype.kind not in "biuf":
        return f"your output holds {arr.dtype} values (dtype kind {arr.dtype.kind!r}), not numbers"
    return None


def _same(a: Any, b: Any) -> bool:
    """Loose equality used to recognise a known mistake (NaNs equal, small float noise ignored)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, (tuple, list))
            and isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    x, y = _as_array(a), _as_array(b)
    if x is None or y is None or x.shape != y.shape:
        return False
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        return False  # complex or non-numbers never match a known (real-valued) mistake
    if x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return bool(np.array_equal(x, y))
    try:
        return bool(np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=1e-4, atol=1e-6, equal_nan=True))
    except (TypeError, ValueError):
        return False


def _unchanged(before: Any, after: Any) -> bool:
    """Exact equality of an input before and after the submission ran (any in-place write shows)."""
    x, y = _as_array(before), _as_array(after)
    if x is None or y is None:
        return bool(before == after) if type(before) is type(after) else False
    return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


# ---------------------------------------------------------------------------------------------- the loop
class SubmissionTimeout(BaseException):
    """Raised inside a submission that ran past its time limit (a BaseException, so ``except Exception`` cannot swallow it)."""


def run_submission(fn: Callable[..., Any], args: Sequence[Any], time_limit: float = TIME_LIMIT_S) -> tuple[str, Any]:
    """Call ``fn(*args)`` as untrusted code: under a time limit, and never letting its exceptions escape.

    On Linux and macOS, in the main thread (a notebook cell, a script, pytest), the call runs right there and a
    ``SIGALRM`` timer interrupts it after ``time_limit`` seconds (even inside ``time.sleep``); a timer already set
    by someone else (e.g. pytest-timeout) is restored afterwards. Elsewhere (another thread, Windows) it runs in a
    daemon thread that the grader stops waiting for after ``time_limit``; a pure-Python loop is then interrupted
    by an asynchronous exception, while a single long C call (one huge numpy operation) finishes in the background.

    Args:
        fn: the submission.
        args: its positional arguments.
        time_limit: seconds (> 0).

    Returns:
        ``("ok", value)``, ``("raised", exception)`` (``SystemExit`` from ``sys.exit()`` included) or
        ``("timeout", None)``. ``KeyboardInterrupt`` (the user pressing stop) is re-raised.
    """
    if time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    use_alarm = hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")
    if use_alarm and threading.current_thread() is threading.main_thread():
        return _run_with_alarm(fn, args, time_limit)
    return _run_in_thread(fn, args, time_limit)


def _run_with_alarm(fn: Callable[..., Any], args: Sequence[Any], time_limit: float) -> tuple[str, Any]:
    state = {"active": True, "fired": False}

    def on_alarm(signum: int, frame: Any) -> None:
        if state["active"]:
            state["fired"] = True
            raise SubmissionTimeout

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, time_limit)
    start = time.monotonic()
    try:
        try:
            outcome: tuple[str, Any] = ("ok", fn(*args))
        except SubmissionTimeout:
            outcome = ("timeout", None)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit and everything else is the submission's failure
            outcome = ("raised", exc)
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # give back the timer we borrowed, minus the time spent
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)
    if state["fired"]:  # the submission caught the timeout itself (a bare `except:`) and went on
        return ("timeout", None)
    return outcome


def _run_in_thread(fn: Callable[..., Any], args: Sequence[Any], time_limit: float) -> tuple[str, Any]:
    box: dict[str, Any] = {}
    context = contextvars.copy_context()  # the caller's numpy errstate etc.

    def target() -> None:
        try:
            box["outcome"] = ("ok", context.run(fn, *args))
        except SubmissionTimeout:
            box["outcome"] = ("timeout", None)
        except BaseException as exc:  # noqa: BLE001 - reported, never raised
            box["outcome"] = ("raised", exc)

    worker = threading.Thread(target=target, name="refreekv-submission", daemon=True)
    worker.start()
    try:
        worker.join(time_limit)
    except KeyboardInterrupt:
        _interrupt_thread(worker)
        raise
    if worker.is_alive():
        _interrupt_thread(worker)
        return ("timeout", None)
    return box.get("outcome", ("timeout", None))


def _interrupt_thread(worker: threading.Thread) -> None:
    """Raise :class:`SubmissionTimeout` inside ``worker`` at its next Python instruction (CPython; else a no-op)."""
    try:
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(worker.ident or 0), ctypes.py_object(SubmissionTimeout)
        )
    except (ImportError, AttributeError):  # not CPython: the daemon thread is left to finish on its own
        pass


def grade(exercise: Exercise, fn: Callable[..., Any], seed: int = 0, time_limit: float = TIME_LIMIT_S) -> CheckResult:
    """Run ``fn`` on every case of ``exercise`` (positional arguments), stop at the first wrong answer, explain it.

    Args:
        exercise: what to check.
        fn: the submission.
        seed: seed of the random cases (the same seed gives the same cases, so a failure can be reproduced).
        time_limit: seconds one call may run before it counts as a failure (see :func:`run_submission`).
    """
    if not callable(fn):
        raise TypeError(
            f"pass your function itself, e.g. check_{exercise.name}({exercise.name}), not {type(fn).__name__}"
        )
    cases = exercise.make_cases(np.random.default_rng(seed))
    names = [c.name for c in cases]
    compare = exercise.compare or compare_values
    for i, case in enumerate(cases):
        expected = exercise.reference(*copy.deepcopy(case.args))
        args = copy.deepcopy(case.args)
        status, got = run_submission(fn, args, time_limit)
        if status == "timeout":
            problem = f"did not finish within {time_limit:g} s: the grader stopped it"
            return _failed(exercise, i, cases, case, expected, problem, TIMEOUT_HINT)
        if status == "raised":
            exc = got
            if isinstance(exc, NotImplementedError):
                return _failed(
                    exercise,
                    i,
                    cases,
                    case,
                    expected,
                    "raised NotImplementedError",
                    "the function is still the stub: replace `raise NotImplementedError` with your code.",
                )
            if isinstance(exc, SystemExit):
                problem = f"called sys.exit({exc.code!r}) (or exit()/quit()): the grader caught it"
                return _failed(exercise, i, cases, case, expected, problem, EXIT_HINT)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            problem = f"raised {type(exc).__name__}: {exc} (line {where.lineno}: {where.line})"
            return _failed(exercise, i, cases, case, expected, problem, _hint_for_error(exc, case))
        changed = [j for j, (a, b) in enumerate(zip(args, case.args)) if not _unchanged(b, a)]
        if changed:
            names_ = _param_names(exercise.signature, len(case.args))
            return _failed(
                exercise,
                i,
                cases,
                case,
                expected,
                f"your function changed its input argument #{changed[0] + 1} ({names_[changed[0]]}) in place",
                MUTATION_HINT,
                got,
            )
        kind = bad_dtype(got)
        if kind:
            return _failed(exercise, i, cases, case, expected, kind, DTYPE_HINT, got)
        problem = compare(expected, got)
        if problem:
            hint, diagnosis = _diagnose(exercise, case, got)
            return _failed(exercise, i, cases, case, expected, problem, hint, got, diagnosis)
    return CheckResult(exercise.name, True, len(cases), len(cases), None, names)


def _diagnose(exercise: Exercise, case: Case, got: Any) -> tuple[str, str | None]:
    for mistake in exercise.mistakes:
        try:
            theirs = mistake.fn(*copy.deepcopy(case.args))
        except Exception:  # noqa: BLE001 - a mistake that crashes on this case just does not match
            continue
        if _same(theirs, got):
            return mistake.hint, mistake.name
    return (
        case.hint or "compare your code with the definition in the exercise text, line by line, on this small case."
    ), None


def _param_names(signature: str, count: int) -> list[str]:
    """``"f(a, b) -> c"`` -> ``["a", "b"]`` (falls back to ``arg1, arg2, ...``)."""
    inside = signature.partition("(")[2].partition(")")[0]
    names = [p.strip() for p in inside.split(",") if p.strip()]
    return names if len(names) == count else [f"arg{j + 1}" for j in range(count)]


def _hint_for_error(exc: BaseException, case: Case) -> str:
    if isinstance(exc, (IndexError, ValueError)) and ("shape" in str(exc) or "broadcast" in str(exc)):
        return "a shape mismatch: print the .shape of every intermediate array and compare with the shapes in the docstring."
    return case.hint or "read the error above; the case's inputs are listed so you can reproduce it."


_NOTHING = object()  # the submission returned nothing (it raised, exited or timed out)


def _failed(
    exercise: Exercise,
    i: int,
    cases: list[Case],
    case: Case,
    expected: Any,
    problem: str,
    hint: str,
    got: Any = _NOTHING,
    diagnosis: str | None = None,
) -> CheckResult:
    names = _param_names(exercise.signature, len(case.args))
    inputs = "\n".join(f"{name} = {summarize(a)}" for name, a in zip(names, case.args))
    failure = Failure(
        case=case.name,
        about=case.about,
        inputs=f"{exercise.signature}\n{inputs}",
        expected=summarize(expected),
        got="(nothing: it did not return)" if got is _NOTHING else summarize(got),
        problem=problem,
        hint=hint,
        diagnosis=diagnosis,
    )
    return CheckResult(exercise.name, False, i, len(cases), failure, [c.name for c in cases])
