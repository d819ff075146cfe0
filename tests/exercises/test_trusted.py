"""The trusted re-grade of a notebook (issue 18): the points do not depend on anything the notebook does.

Each test writes a small submitted notebook and grades it with :func:`regrade_notebook`, which re-runs the
cells in a fresh ``python -I`` child per question and grades from this process. The hostile notebooks are the
ones issue 18 measured: ``SOLUTIONS = True`` with the stubs, the instructor solutions imported (directly or
wrapped), the grader patched to pass garbage, ``REFREEKV_SOLUTIONS=1`` in the grader's environment, a cell that
loops at its top level, a cell that exits the process.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

import pytest

from refreekv_edu.exercises import isolation
from refreekv_edu.exercises import solutions as sol
from refreekv_edu.exercises.trusted import regrade_notebook, runnable

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the re-grade's children need POSIX")

QUESTIONS = {"halting_curve": "halting_curve", "halting_cut": "halting_cut"}
SETUP = "import numpy as np\n\nfrom refreekv_edu import exercises as ex\n"
STUBS = (
    "def halting_curve(last_attn, order):\n    raise NotImplementedError\n",
    "def halting_cut(last_attn, order, threshold):\n    raise NotImplementedError\n",
)
#: The student's correct answers: the instructor's code typed into the notebook (its module is the notebook's).
CORRECT = (inspect.getsource(sol.halting_curve), inspect.getsource(sol.halting_cut))


def _notebook(tmp_path: Path, *cells: str) -> Path:
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None} for c in cells
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "submission.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def _points(tmp_path: Path, *cells: str, **options) -> dict[str, tuple[int, int]]:
    results = regrade_notebook(_notebook(tmp_path, *cells), QUESTIONS, seed=20261206, time_limit_s=1.0, **options)
    return {q: (r.n_passed, r.n_cases) for q, r in results.items()}


def test_a_correct_notebook_passes_everything(tmp_path: Path) -> None:
    points = _points(tmp_path, SETUP, CORRECT[0], "ex.check_halting_curve(halting_curve)\n", CORRECT[1])
    assert all(passed == total > 0 for passed, total in points.values()), points


def test_the_solutions_switch_and_imported_solutions_score_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFREEKV_SOLUTIONS", "1")  # the grader's own environment: the child must not see it
    switch = "import os\nos.environ['REFREEKV_SOLUTIONS'] = '1'\nSOLUTIONS = True\n"
    assert all(p == 0 for p, _ in _points(tmp_path, SETUP, switch, *STUBS).values())
    imported = "from refreekv_edu.exercises.solutions import halting_curve, halting_cut\n"
    assert all(p == 0 for p, _ in _points(tmp_path, SETUP, imported).values())
    wrapped = (
        "from refreekv_edu.exercises import solutions as s\n"
        "def halting_curve(a, o):\n    return s.halting_curve(a, o)\n"
        "def halting_cut(a, o, t):\n    return s.halting_cut(a, o, t)\n"
    )
    results = regrade_notebook(_notebook(tmp_path, SETUP, wrapped), QUESTIONS, seed=1, time_limit_s=1.0)
    assert all(r.n_passed == 0 for r in results.values())
    assert "instructor solutions are not available" in results["halting_cut"].message


def test_the_environment_of_the_child_is_clean(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFREEKV_SOLUTIONS", "1")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    guard = "import os\nassert not [k for k in os.environ if k.startswith(('REFREEKV_', 'PYTHON'))]\n"
    # the guard cell raises in a dirty environment, so the definitions after it would still run: put them inside
    points = _points(tmp_path, SETUP, guard + CORRECT[0] + CORRECT[1])
    assert all(passed == total for passed, total in points.values()), points


def test_a_patched_grader_in_the_notebook_changes_nothing(tmp_path: Path) -> None:
    tamper = (
        "import refreekv_edu.exercises.grading as g\n"
        "g.compare_values = lambda *a, **k: None\n"
        "g.bad_dtype = lambda *a: None\n"
    )
    garbage = "def halting_curve(a, o):\n    return np.zeros(3)\ndef halting_cut(a, o, t):\n    return 0\n"
    points = _points(tmp_path, SETUP, tamper, garbage)
    assert points["halting_curve"][0] == 0 and points["halting_cut"][0] < points["halting_cut"][1]


def test_a_broken_cell_is_skipped_and_bare_expressions_are_not_run(tmp_path: Path) -> None:
    looping_call = "halting_cut(None, None, 0.05)\nimport os\nos._exit(0)\n"  # bare expressions: left out
    points = _points(tmp_path, SETUP, "1 / 0\n", CORRECT[0], CORRECT[1], looping_call, "%timeit 1\n!ls\n")
    assert all(passed == total for passed, total in points.values()), points
    assert runnable("x = 1\nprint(x)\n%time x\nf(x)\n") == "x = 1"


def test_a_top_level_loop_or_exit_fails_with_a_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(isolation, "STARTUP_S", 3.0)
    start = time.monotonic()
    results = regrade_notebook(
        _notebook(tmp_path, SETUP, *CORRECT, "while True:\n    pass\n"), QUESTIONS, seed=1, time_limit_s=1.0
    )
    assert time.monotonic() - start < 2 * (3.0 + 3.0)
    assert all(r.n_passed == 0 for r in results.values())
    assert "did not start within 3 s" in results["halting_cut"].message
    assert "Restart and Run All" in results["halting_cut"].message
    exits = regrade_notebook(
        _notebook(tmp_path, SETUP, "import os\nif True:\n    os._exit(0)\n", *CORRECT),
        QUESTIONS,
        seed=1,
        time_limit_s=1.0,
    )
    assert all(r.n_passed == 0 for r in exits.values())


def test_a_missing_function_and_a_non_notebook_are_explained(tmp_path: Path) -> None:
    results = regrade_notebook(_notebook(tmp_path, SETUP, CORRECT[0]), QUESTIONS, seed=1, time_limit_s=1.0)
    assert results["halting_curve"].passed
    assert "defines no function named 'halting_cut'" in results["halting_cut"].message
    bad = tmp_path / "not.ipynb"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable .ipynb"):
        regrade_notebook(bad, QUESTIONS, seed=1)
