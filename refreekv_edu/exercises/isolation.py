"""Grading in a child process that the parent kills at a deadline: what the submission does cannot reach the grader.

In-process limits (:mod:`~refreekv_edu.exercises.sandbox`) stop an honest endless loop, but code running in the
grader's own process can clear the timer, ignore ``SIGALRM``, spend 40 s in one C call, replace the grader's
functions or ``os._exit``. Here the submission runs in a child process:

- the parent sends each case's inputs down a pipe and waits at most ``time_limit`` (plus a small grace) for the
  answer; then it ``SIGKILL`` s the child, whatever it is doing, and the case failed with "did not finish";
- the child answers with plain data only (:mod:`~refreekv_edu.exercises.wire`: arrays and numbers; anything
  else arrives as a description), so the parent never runs the submission's ``__str__``, ``__repr__``,
  ``__eq__`` or ``__array__``;
- the parent computes the expected answers and compares them itself, with the package's own functions, so
  monkeypatching the grader inside the child changes nothing;
- a child that dies (``os._exit``, a segfault) fails that case and a fresh child takes the next one.

:func:`grade_isolated` grades a function of this process in a ``fork`` ed child (POSIX). The course's trusted
re-grade (:mod:`~refreekv_edu.exercises.trusted`) uses the same parent side with a child that re-runs a
submitted notebook instead.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from .checks import exercise_named
from .grading import grade
from .results import CheckResult
from .sandbox import TIME_LIMIT_S, Call, call_submission
from .wire import WireError, plain, receive, send

#: Seconds the parent waits beyond a call's time limit (the pipe, the child's own timer firing first).
GRACE_S = 1.0
#: Seconds a fresh child may take before its first answer (imports; the trusted child runs a notebook too).
STARTUP_S = 30.0


def refuse_library_function(fn: Any) -> str | None:
    """A reason to refuse ``fn`` when it is the package's own code (``refreekv_edu.*``), else ``None``."""
    module = getattr(fn, "__module__", None) or ""
    if isinstance(module, str) and (module == "refreekv_edu" or module.startswith("refreekv_edu.")):
        name = getattr(fn, "__qualname__", getattr(fn, "__name__", "?"))
        return f"this is {module}.{name}, the package's own function, not yours"
    return None


# ------------------------------------------------------------------------------------------------- the child
def serve(fn: Callable[..., Any], requests: int, answers: int) -> None:
    """The child's loop: read ``{"args", "time_limit"}`` requests, call ``fn``, answer with a plain :class:`Call`."""
    while True:
        try:
            request = receive(requests)
        except WireError:  # the parent closed the pipe: grading is over
            return
        call = call_submission(fn, request["args"], float(request["time_limit"]))
        send(answers, call_message(call))


def call_message(call: Call) -> dict[str, Any]:
    """A :class:`Call` as a plain-data message (the value made plain, see :func:`~.wire.plain`)."""
    return {
        "status": call.status,
        "value": plain(call.value),
        "error_type": call.error_type,
        "error_text": call.error_text,
        "error_line": call.error_line,
        "mutated": call.mutated,
        "detail": call.detail,
    }


def message_call(message: Any) -> Call:
    """The :class:`Call` of a child's message; a malformed message is a crash."""
    try:
        status = str(message["status"])
        if status not in ("ok", "raised", "timeout"):
            raise KeyError(status)
        mutated = message.get("mutated")
        return Call(
            status,
            message.get("value"),
            str(message.get("error_type", ""))[:80],
            str(message.get("error_text", ""))[:400],
            str(message.get("error_line", ""))[:300],
            int(mutated) if isinstance(mutated, int) and not isinstance(mutated, bool) else None,
            str(message.get("detail", ""))[:80],
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return Call("crashed", detail="it sent an answer the grader could not read")


# ------------------------------------------------------------------------------------------------- the parent
class ChildRunner:
    """The parent side: a :data:`~refreekv_edu.exercises.grading.Caller` that calls the submission in a child.

    Subclasses start the child (:meth:`_spawn`: ``(pid, requests fd, answers fd)``); after a child dies or is
    killed, the next call starts a fresh one. :meth:`close` (or ``with``) kills the last child.
    """

    def __init__(self) -> None:
        self._child: tuple[int, int, int] | None = None
        self._fresh = False
        self.broken: str = ""  # set by a subclass when no child can ever answer (e.g. the notebook fails)

    def _spawn(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def _ready(self, answers: int, deadline: float) -> None:
        """Wait for a fresh child to be ready (the trusted child reports on the notebook; default: nothing)."""

    def __call__(self, args: tuple[Any, ...], time_limit: float) -> Call:
        if self.broken:
            return Call("refused", detail=self.broken)
        start = time.monotonic()
        if self._child is None:
            self._child = self._spawn()
            try:
                self._ready(self._child[2], start + STARTUP_S)
            except WireError as exc:
                self.broken = self.broken or (
                    f"the process that runs your code did not start within {STARTUP_S:.0f} s ({exc}): "
                    "a cell that loops or waits at its top level?"
                )
            if self.broken:
                self.close()
                return Call("refused", detail=self.broken)
            start = time.monotonic()
        pid, requests, answers = self._child
        deadline = start + time_limit + GRACE_S
        try:
            send(requests, {"args": tuple(args), "time_limit": time_limit}, deadline)
            return message_call(receive(answers, deadline))
        except (WireError, OSError) as exc:
            late = time.monotonic() >= deadline
            status = self.close(wait_s=0.0 if late else 1.0)  # a closed pipe: the child is dying, hear how
            if late:
                return Call("timeout")
            return Call("crashed", detail=status or str(exc))

    def close(self, wait_s: float = 0.0) -> str:
        """Kill the child (if any, after waiting up to ``wait_s`` for it to end on its own); how it had ended,
        e.g. ``"killed by signal 11"``, or ``""`` when it was still running."""
        if self._child is None:
            return ""
        pid, requests, answers = self._child
        self._child = None
        ended = ""
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            until = time.monotonic() + wait_s
            while not done and time.monotonic() < until:
                time.sleep(0.01)
                done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended = _describe_status(status)
            self._kill(pid)
            if not done:
                os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
        for fd in (requests, answers):
            try:
                os.close(fd)
            except OSError:
                pass
        return ended

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ChildRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by signal {number} ({name})"
    return f"exited with status {os.WEXITSTATUS(status)}"


class ForkedRunner(ChildRunner):
    """Calls ``fn`` (a function of this process) in a ``fork`` ed child."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def _spawn(self) -> tuple[int, int, int]:
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's cleanup (atexit, pytest...)
            code = 0
            try:
                os.close(to_child)
                os.close(from_child)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                faulthandler.disable()  # a crash is reported by the parent, not dumped into its output
                serve(self.fn, from_parent, to_parent)
            except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the parent's code
                code = 1
            finally:
                os._exit(code)
        os.close(from_parent)
        os.close(to_parent)
        return pid, to_child, from_child


def grade_isolated(
    name: str,
    fn: Callable[..., Any],
    seed: int = 0,
    time_limit: float = TIME_LIMIT_S,
    groups: Sequence[str] | None = None,
) -> CheckResult:
    """Grade ``fn`` as exercise ``name`` with every call in a child process killed at its deadline (POSIX only).

    The same cases, comparison and explanation as :func:`~refreekv_edu.exercises.checks.check`; the package's
    own implementations are refused (every case fails with the reason).
    """
    if not hasattr(os, "fork"):
        raise RuntimeError("grade_isolated needs os.fork (Linux or macOS); on Windows grade with `refreekv-edu grade`")
    if not callable(fn):
        raise TypeError(f"pass the function itself, e.g. grade_isolated({name!r}, {name}), not {type(fn).__name__}")
    exercise = exercise_named(name)
    refused = refuse_library_function(fn)
    if refused:
        return grade(
            exercise, None, seed, time_limit, groups, caller=lambda args, limit: Call("refused", detail=refused)
        )
    with ForkedRunner(fn) as runner:
        return grade(exercise, None, seed, time_limit, groups, caller=runner)
