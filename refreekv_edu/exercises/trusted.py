"""The trusted re-grade of a submitted notebook: the points that count are computed here, not in the student's kernel.

otter-grader runs a notebook's tests in the student's own kernel, where the student's code can set
``SOLUTIONS = True``, import the instructor solutions, replace the grader's functions or stop its timer. The
re-grade takes none of that on trust. For each question, :func:`regrade_notebook`

1. starts a fresh ``python -I`` child (no ``PYTHONPATH``, no user site, no ``REFREEKV_*`` variables) in an
   empty folder, where the instructor solutions answer every call with an error;
2. the child re-runs the notebook's code cells: cell magics, shell lines and bare expressions (a check call, a
   ``print``, a test call that could loop) are left out, so what runs are the imports, definitions and
   assignments; a cell that raises is skipped and reported;
3. the parent (this process) sends the hidden cases one by one, kills the child at each call's deadline,
   computes the expected answers itself and compares them with its own functions
   (:mod:`~refreekv_edu.exercises.isolation`).

What the re-grade does not defend against, and says so: the child runs as the same user, so a deliberately
hostile notebook could still read the package's files or signal other processes; for an untrusted cohort run
the grading inside a container (as otter does with Docker). And the package itself implements the algorithm:
calling ``rk.*`` from a submission is allowed by the grader and must be ruled out by the course's rules.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checks import exercise_named
from .grading import grade
from .isolation import ChildRunner, refuse_library_function, serve
from .results import CheckResult
from .sandbox import TIME_LIMIT_S
from .wire import WireError, receive, send

#: Module the child blocks: importing it (or reading its functions) in a submission gives an error.
SOLUTIONS_MODULE = "refreekv_edu.exercises.solutions"


def regrade_notebook(
    notebook: str | Path,
    questions: Mapping[str, str],
    seed: int,
    groups: Sequence[str] | None = None,
    time_limit_s: float = TIME_LIMIT_S,
) -> dict[str, CheckResult]:
    """Grade the functions a notebook defines, each in its own fresh child, at ``seed``.

    Args:
        notebook: the submitted ``.ipynb``.
        questions: ``{function name in the notebook: exercise name}``.
        seed: the seed of the cases (the hidden seed for points).
        groups: the case groups to run (default all).
        time_limit_s: seconds one call may run.

    Returns:
        ``{function name: CheckResult}``.
    """
    path = Path(notebook)
    cells = notebook_code(path)  # a notebook that is not JSON fails here, before any child starts
    results = {}
    for function, exercise in questions.items():
        with NotebookRunner(cells, function) as runner:
            results[function] = grade(exercise_named(exercise), None, seed, time_limit_s, groups, caller=runner)
    return results


def notebook_code(path: Path) -> list[str]:
    """The code cells of ``path``, as source text; a clear error when it is not a notebook."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        return ["".join(c["source"]) if isinstance(c["source"], list) else str(c["source"]) for c in cells]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable .ipynb notebook ({type(exc).__name__}: {exc})") from None


def runnable(source: str) -> str:
    """``source`` without magics, shell lines and top-level bare expressions (what the re-grade runs).

    Returns the empty string for a cell that does not parse (it is reported, not run).
    """
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    tree.body = [node for node in tree.body if not isinstance(node, ast.Expr)]
    return ast.unparse(tree)


class NotebookRunner(ChildRunner):
    """Calls the notebook's function ``function`` in a ``python -I`` child that re-ran the notebook's cells."""

    def __init__(self, cells: list[str], function: str) -> None:
        super().__init__()
        self.cells, self.function = cells, function
        self.cell_errors: list[str] = []
        self._folder = tempfile.TemporaryDirectory(prefix="refreekv-regrade-")
        self._proc: subprocess.Popen | None = None

    def _spawn(self) -> tuple[int, int, int]:
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REFREEKV_", "PYTHON"))}
        cmd = [sys.executable, "-I", "-m", "refreekv_edu.exercises.trusted", str(from_parent), str(to_parent)]
        self._proc = subprocess.Popen(
            cmd,
            pass_fds=(from_parent, to_parent),
            env=env,
            cwd=self._folder.name,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(from_parent)
        os.close(to_parent)
        return self._proc.pid, to_child, from_child

    def _ready(self, answers: int, deadline: float) -> None:
        assert self._child is not None
        send(self._child[1], {"cells": self.cells, "function": self.function}, deadline)
        report = receive(answers, deadline)
        if not isinstance(report, dict):
            raise WireError("the child did not report on the notebook")
        self.cell_errors = [str(e)[:300] for e in report.get("cell_errors", [])][:20]
        if report.get("problem"):
            self.broken = str(report["problem"])[:400]

    def _kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own session: anything it started goes too
        except (ProcessLookupError, PermissionError):
            pass

    def close(self, wait_s: float = 0.0) -> str:
        ended = super().close(wait_s)
        if self._proc is not None:
            self._proc.wait()  # reaped by waitpid already; this only clears Popen's bookkeeping
            self._proc = None
        return ended

    def __exit__(self, *exc: Any) -> None:
        self.close()
        self._folder.cleanup()


# ------------------------------------------------------------------------------------------------- the child
def _block_solutions() -> None:
    """Make the instructor solutions unusable in this process: every function of the module raises."""

    def blocked(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the instructor solutions are not available while your notebook is graded")

    fake = types.ModuleType(SOLUTIONS_MODULE)
    fake.__getattr__ = lambda name: blocked  # type: ignore[method-assign]
    real = sys.modules.get(SOLUTIONS_MODULE)
    if real is not None:
        for name in [n for n in vars(real) if not n.startswith("__") and callable(vars(real)[n])]:
            setattr(real, name, blocked)
    sys.modules[SOLUTIONS_MODULE] = fake
    from . import checks

    for exercise in checks.EXERCISES.values():
        exercise.reference = blocked


def child_main(requests: int, answers: int) -> int:
    """The child: receive the cells, run them, report, then serve calls of the function."""
    _block_solutions()
    job = receive(requests)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    errors = []
    for i, source in enumerate(job["cells"]):
        try:
            code = compile(runnable(source), f"<cell {i + 1}>", "exec")
            exec(code, namespace)  # noqa: S102 - running the submission is the point (in this child only)
        except BaseException as exc:  # noqa: BLE001 - a broken cell is reported; the next cells still run
            errors.append(f"cell {i + 1}: {type(exc).__name__}")
    fn = namespace.get(job["function"])
    problem = ""
    if not callable(fn):
        problem = f"the notebook defines no function named {job['function']!r} (after running its cells)"
    else:
        problem = refuse_library_function(fn) or ""
    send(answers, {"cell_errors": errors, "problem": problem})
    if not problem:
        serve(fn, requests, answers)
    return 0


if __name__ == "__main__":
    os._exit(child_main(int(sys.argv[1]), int(sys.argv[2])))
