"""Calling a submission as untrusted code, in this process: a time limit, no escaping exceptions, no silent writes.

:func:`call_submission` is what a grader does with every case: call ``fn`` on copies of the inputs under
:func:`run_submission` (a ``SIGALRM`` timer in the main thread, else a watched thread), then report the outcome as
a :class:`Call` of plain data: the value, or the exception's type, text and line (read safely: an exception
whose ``__str__`` raises is described, not re-raised), and which input, if any, the function wrote into.

In-process limits are a courtesy to the student, not a defence: code in the same process can clear the timer,
ignore the signal or replace the grader. :mod:`refreekv_edu.exercises.isolation` runs the same calls in a child
process that the parent kills at a deadline.
"""

from __future__ import annotations

import contextvars
import copy
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .values import safe_text, unchanged

#: Seconds one call of a submission may run (every case is small: a correct answer takes milliseconds).
TIME_LIMIT_S = 5.0


@dataclass
class Call:
    """What one call of a submission did, as plain data (the same whether it ran here or in a child process).

    Attributes:
        status: ``"ok"``, ``"raised"``, ``"timeout"``, ``"crashed"`` (the process running it died),
            ``"refused"`` (the package's own function was submitted, or a notebook could not be run to define
            it; ``detail`` says which) or ``"not run"`` (an earlier case ran out of time).
        value: the returned value (``status == "ok"``).
        error_type: the exception's class name, e.g. ``"ValueError"`` (``"SystemExit"`` for ``sys.exit()``).
        error_text: ``str(exception)``, or ``repr`` of the exit code for ``SystemExit``.
        error_line: where it was raised, e.g. ``"line 3: x = a / b"``.
        mutated: index of the first input argument the function wrote into, else ``None``.
        detail: how a crash looked (``"exited with status 3"``, ``"killed by signal 11"``), why a submission was
            refused, or ``"shape-like"`` for an ``IndexError``/``ValueError`` (the hint may be about shapes).
    """

    status: str
    value: Any = None
    error_type: str = ""
    error_text: str = ""
    error_line: str = ""
    mutated: int | None = None
    detail: str = ""


def call_submission(fn: Callable[..., Any], args: Sequence[Any], time_limit: float = TIME_LIMIT_S) -> Call:
    """Call ``fn`` on deep copies of ``args`` under :func:`run_submission`; the outcome as a :class:`Call`."""
    given = copy.deepcopy(tuple(args))
    status, got = run_submission(fn, given, time_limit)
    if status == "timeout":
        return Call("timeout")
    if status == "raised":
        return describe_exception(got)
    changed = [j for j, (a, b) in enumerate(zip(given, args)) if not unchanged(b, a)]
    return Call("ok", got, mutated=changed[0] if changed else None)


def describe_exception(exc: BaseException) -> Call:
    """A ``"raised"`` :class:`Call` for ``exc``, every field read without trusting the exception object."""
    error_type = safe_text(type(exc).__name__, 80)
    if isinstance(exc, SystemExit):
        return Call("raised", error_type="SystemExit", error_text=safe_text(exc.code, how="repr"))
    if isinstance(exc, NotImplementedError):
        error_type = "NotImplementedError"
    try:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        line = f"line {where.lineno}: {where.line}"
    except BaseException:  # noqa: BLE001 - no traceback (or a hostile one): the line is unknown
        line = ""
    shape_error = isinstance(exc, (IndexError, ValueError))  # a subclass's own name would hide it
    return Call(
        "raised",
        error_type=error_type,
        error_text=safe_text(exc),
        error_line=line,
        detail="shape-like" if shape_error else "",
    )


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
