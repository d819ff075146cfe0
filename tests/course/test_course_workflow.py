"""The course workflow end to end (issue 18): ``refreekv-edu assign`` then ``refreekv-edu grade`` to a CSV.

One module-scoped ``assign`` builds the student and autograder versions of every exercise notebook (otter
assign also grades its solutions notebook: every public and hidden test passes on the instructor solutions).
Six synthetic submissions of ex02 (five functions, 3 points each: one per case group) are built from the
*student* notebook and graded by the ``grade`` command in one batch:

====================  =========================================================  ===========================
submission            what it does                                               trusted points
====================  =========================================================  ===========================
correct               the instructor solutions pasted into the answer cells      15 / 15
planted               as correct, but ``halting_curve`` uses the L1 norm         5 / 15 (the L1 curve also
                      (the other functions call it, so they go wrong too)        breaks halting_cut,
                                                                                 candidate_curve, recency_keep)
half                  3 functions solved, 2 left as stubs                        9 / 15
solutions_switch      ``SOLUTIONS = True`` and ``REFREEKV_SOLUTIONS=1``, stubs   0
monkeypatch           the grading module patched to pass, garbage answers        0 (otter's score: tampered)
loop                  ``kept_positions`` clears the timer and loops forever      0 for it, 12 for the rest
====================  =========================================================  ===========================
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("otter", reason="needs the 'course' extra: pip install 'refreekv_edu[course]'")
pytest.importorskip("refreekv_edu.exercises.trusted", reason="needs the trusted re-grade engine (issue 18)")

from refreekv_edu.course import masters  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HIDDEN_SEED = 20261206
EX02 = "ex02_halting_rule"
QUESTIONS = ["halting_curve", "halting_cut", "candidate_curve", "recency_keep", "kept_positions"]
PER_QUESTION = sum(masters.GROUP_POINTS.values())
TIME_LIMIT_S = 2.0
SUBMISSION_TIMEOUT_S = 30.0

L1_CURVE = '''def halting_curve(last_attn, order):
    """L1 instead of L2: forgot to square and take the root."""
    a = np.take_along_axis(np.asarray(last_attn, np.float32), order, axis=1)
    R = np.cumsum(a[:, ::-1], axis=1)[:, ::-1].mean(axis=0)
    return ((R[0] - R) / R[0]).astype(np.float32) if R[0] > 0 else np.zeros_like(R)
'''
LOOP_KEPT = '''def kept_positions(order, n_evicted, prompt_len, window):
    import signal
    signal.setitimer(signal.ITIMER_REAL, 0)         # clear the grader's timer
    signal.signal(signal.SIGALRM, signal.SIG_IGN)   # and ignore the signal
    while True:
        pass
'''
TAMPER = '''import refreekv_edu.exercises.grading as _grading
_grading.compare_values = lambda *args, **kwargs: None
_grading._failed = lambda exercise, i, cases, *args, **kwargs: _grading.CheckResult(exercise.name, True, len(cases), len(cases))
'''
SWITCH = '''import os
os.environ["REFREEKV_SOLUTIONS"] = "1"
SOLUTIONS = True
'''


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refreekv_edu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def assigned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("course")
    start = time.monotonic()
    proc = _cli("assign", str(out), "--hidden-seed", str(HIDDEN_SEED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"assign: {time.monotonic() - start:.1f} s")
    return out


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell: dict) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _defined(cell: dict) -> str | None:
    m = re.match(r"def (\w+)\(", _src(cell))
    return m.group(1) if m and cell["cell_type"] == "code" else None


def test_assign_builds_student_and_autograder_versions(assigned: Path) -> None:
    manifest = json.loads((assigned / "autograder" / "course.json").read_text())
    stems = sorted(p.stem for p in (ROOT / "notebooks" / "exercises").glob("ex*.ipynb"))
    assert sorted(manifest["assignments"]) == stems
    assert manifest["hidden_seed"] == HIDDEN_SEED
    for stem in stems:
        info = manifest["assignments"][stem]
        assert (assigned / "student" / f"{stem}.ipynb").is_file()
        assert (assigned / "autograder" / info["zip"]).is_file()
        assert (assigned / "autograder" / stem / f"{stem}.ipynb").is_file()
        stubs = [q.name for q in masters.read_exercise_notebook(ROOT / "notebooks" / "exercises" / f"{stem}.ipynb").questions]
        assert info["questions"] == stubs and all(p == PER_QUESTION for p in info["points"].values())
    assert manifest["assignments"][EX02]["questions"] == QUESTIONS


def _solution_lines() -> set[str]:
    """Every code line of the instructor solutions' function bodies (docstrings excluded), stripped."""
    import ast
    import inspect

    from refreekv_edu.exercises import solutions

    source = inspect.getsource(solutions)
    lines = source.splitlines()
    found = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            for stmt in body:
                for line in lines[stmt.lineno - 1 : stmt.end_lineno]:
                    line = line.split("  #")[0].strip()
                    if len(line) >= 10 and not line.startswith("#"):
                        found.add(line)
    return found


def test_student_notebooks_hold_no_solution_code(assigned: Path) -> None:
    solution_lines = _solution_lines()
    assert len(solution_lines) > 50
    for path in sorted((assigned / "student").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
        assert "SOLUTIONS" not in text and "REFREEKV_SOLUTIONS" not in text and "instructor=" not in text
        assert str(HIDDEN_SEED) not in text  # the hidden tests are not in the student's metadata either
        code_lines = {line.split("  #")[0].strip() for c in nb["cells"] if c["cell_type"] == "code"
                      for line in _src(c).splitlines()}
        leaked = sorted(code_lines & solution_lines)
        assert not leaked, f"{path.name} holds solution code: {leaked[:5]}"
        original = _nb(ROOT / "notebooks" / "exercises" / path.name)
        stubs = {_defined(c): _src(c) for c in original["cells"] if _defined(c)}
        answers = {_defined(c): _src(c) for c in nb["cells"] if _defined(c)}
        assert answers == stubs  # each answer cell is exactly the exercise notebook's stub
        checks = [_src(c) for c in nb["cells"] if _src(c).startswith("grader.check(")]
        assert checks == [f'grader.check("{name}")' for name in stubs]
    autograder_nb = (assigned / "autograder" / EX02 / f"{EX02}.ipynb").read_text(encoding="utf-8")
    assert str(HIDDEN_SEED) in autograder_nb and "np.flip(np.cumsum(np.flip(squares" in autograder_nb


def _submission(assigned: Path, answers: dict[str, str], extra: str | None = None, stem: str = EX02) -> dict:
    """The student notebook of ``stem`` with some answer cells replaced (and an extra cell after the setup)."""
    nb = _nb(assigned / "student" / f"{stem}.ipynb")
    cells = []
    for cell in nb["cells"]:
        name = _defined(cell)
        if name in answers:
            cell = {**cell, "source": answers[name], "outputs": [], "execution_count": None}
        cells.append(cell)
        if extra and _src(cell).startswith("import numpy as np"):
            cells.append({"cell_type": "code", "metadata": {}, "source": extra, "outputs": [], "execution_count": None})
    return {**nb, "cells": cells}


def _solutions_code(assigned: Path, stem: str = EX02) -> dict[str, str]:
    """The instructor's answer cells of ``stem`` (from the autograder's solutions notebook)."""
    nb = _nb(assigned / "autograder" / stem / f"{stem}.ipynb")
    questions = json.loads((assigned / "autograder" / "course.json").read_text())["assignments"][stem]["questions"]
    return {_defined(c): _src(c) for c in nb["cells"] if _defined(c) in questions}


def _in_process_points(code: dict[str, str]) -> dict[str, int]:
    """What the package's own checks give each function of ``code`` at the hidden seed, group by group."""
    import numpy as np

    from refreekv_edu.exercises import check

    env: dict = {"np": np}
    for name in QUESTIONS:
        exec(code[name], env)
    points = {}
    for name in QUESTIONS:
        result = check(name, env[name], seed=HIDDEN_SEED, groups=list(masters.GROUP_POINTS))
        points[name] = sum(masters.GROUP_POINTS[g] for g, (ok, n) in result.by_group().items() if n and ok == n)
    return points


def test_batch_grading_six_submissions(assigned: Path, tmp_path: Path) -> None:
    solved = _solutions_code(assigned)
    stubs = {}  # the student notebook's own cells are the stubs
    planted = {**solved, "halting_curve": L1_CURVE}
    half = {k: solved[k] for k in ("halting_curve", "halting_cut", "kept_positions")}
    garbage = {name: f"def {name}(*args):\n    return np.zeros(3)\n" for name in QUESTIONS}
    submissions = {
        "correct": _submission(assigned, solved),
        "planted": _submission(assigned, planted),
        "half": _submission(assigned, half),
        "solutions_switch": _submission(assigned, stubs, SWITCH),
        "monkeypatch": _submission(assigned, garbage, TAMPER),
        "loop": _submission(assigned, {**solved, "kept_positions": LOOP_KEPT}),
    }
    folder = tmp_path / "submissions"
    folder.mkdir()
    for student, nb in submissions.items():
        (folder / f"{student}.ipynb").write_text(json.dumps(nb), encoding="utf-8")

    start = time.monotonic()
    csv_path = tmp_path / "grades.csv"
    proc = _cli("grade", str(folder), "--autograder", str(assigned / "autograder"), "--csv", str(csv_path),
                "--time-limit", str(TIME_LIMIT_S), "--submission-timeout", str(SUBMISSION_TIMEOUT_S), "--no-progress")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"grade: {elapsed:.1f} s\n{proc.stdout}")
    assert elapsed < 6 * 30 + SUBMISSION_TIMEOUT_S  # one hang costs its own timeout, not the batch

    with csv_path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["student", "assignment", "question", "points", "possible", "total", "feedback",
                             "otter_points", "tampered"]
    points = {(r["student"], r["question"]): float(r["points"]) for r in rows}
    totals = {r["student"]: float(r["total"]) for r in rows}
    assert {r["possible"] for r in rows} == {str(PER_QUESTION)}
    assert len(rows) == 6 * len(QUESTIONS)

    full = PER_QUESTION * len(QUESTIONS)
    assert totals["correct"] == full
    expected_planted = _in_process_points(planted)
    assert expected_planted["kept_positions"] == PER_QUESTION and expected_planted["halting_curve"] < PER_QUESTION
    assert {q: points[("planted", q)] for q in QUESTIONS} == expected_planted == {
        "halting_curve": 0, "halting_cut": 1, "candidate_curve": 0, "recency_keep": 1, "kept_positions": 3}
    assert totals["planted"] == 5
    assert {q: points[("half", q)] for q in QUESTIONS} == {
        "halting_curve": 3, "halting_cut": 3, "candidate_curve": 0, "recency_keep": 0, "kept_positions": 3}
    assert totals["half"] == 9
    assert totals["solutions_switch"] == 0
    assert totals["monkeypatch"] == 0
    assert points[("loop", "kept_positions")] == 0
    assert all(points[("loop", q)] == PER_QUESTION for q in QUESTIONS if q != "kept_positions")
    assert totals["loop"] == full - PER_QUESTION

    feedback = {(r["student"], r["question"]): r["feedback"] for r in rows}
    assert "L2" in feedback[("planted", "halting_curve")] or "L1" in feedback[("planted", "halting_curve")]
    assert feedback[("correct", "halting_curve")].startswith("PASSED")
    otter = {(r["student"], r["question"]): r["otter_points"] for r in rows}
    assert all(otter[("correct", q)] == str(PER_QUESTION) for q in QUESTIONS)  # otter agrees on honest work
    tampered = {r["student"] for r in rows if r["tampered"] == "1"}
    assert tampered <= {"monkeypatch", "solutions_switch"} and "monkeypatch" in tampered
    assert all(otter[("monkeypatch", q)] == str(PER_QUESTION) for q in QUESTIONS)  # otter was fooled; the CSV was not
    assert all(otter[("loop", q)] == "" for q in QUESTIONS)  # otter run hung on the loop and was stopped
    print(f"otter points of the monkeypatched submission: {[otter[('monkeypatch', q)] for q in QUESTIONS]}")


def _grade(assigned: Path, folder: Path, csv_path: Path, *extra: str) -> list[dict]:
    proc = _cli("grade", str(folder), "--autograder", str(assigned / "autograder"), "--csv", str(csv_path),
                "--time-limit", str(TIME_LIMIT_S), "--submission-timeout", str(SUBMISSION_TIMEOUT_S), "--no-progress",
                *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with csv_path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_assignment_solved_scores_full_marks_and_a_broken_file_costs_only_its_own(assigned: Path,
                                                                                         tmp_path: Path) -> None:
    """ex01 and ex03 solved score full marks, otter agreeing (every hidden case crosses the re-grade's pipe);
    a file that is not a notebook, in a folder of two assignments, gets one row saying why and 0 points."""
    manifest = json.loads((assigned / "autograder" / "course.json").read_text())
    folder = tmp_path / "mixed"
    folder.mkdir()
    solved = {}
    for stem in sorted(manifest["assignments"]):
        if stem != EX02:
            solved[stem] = stem.split("_")[0]
            nb = _submission(assigned, _solutions_code(assigned, stem), stem=stem)
            (folder / f"{solved[stem]}_student.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (folder / "carol.ipynb").write_text("{not json", encoding="utf-8")
    rows = _grade(assigned, folder, tmp_path / "mixed.csv", "--jobs", "2")  # two at once, rows in folder order
    assert [r["student"] for r in rows] == sorted(r["student"] for r in rows)
    for stem, prefix in solved.items():
        mine = [r for r in rows if r["student"] == f"{prefix}_student"]
        assert [r["question"] for r in mine] == manifest["assignments"][stem]["questions"]
        assert all(r["points"] == r["possible"] == str(PER_QUESTION) for r in mine), [r["feedback"][:300] for r in mine]
        assert all(r["otter_points"] == str(PER_QUESTION) and r["tampered"] == "0" for r in mine)
    carol = [r for r in rows if r["student"] == "carol"]
    assert len(carol) == 1 and carol[0]["points"] == "0" and "cannot tell which assignment" in carol[0]["feedback"]

    # One assignment in the folder: the unreadable file is that assignment's, 0 on every question, and says why.
    single = tmp_path / "single"
    single.mkdir()
    (single / "dora.ipynb").write_text(json.dumps(_submission(assigned, _solutions_code(assigned))), encoding="utf-8")
    (single / "carol.ipynb").write_bytes(b"\xff\xfe not a notebook")
    rows = _grade(assigned, single, tmp_path / "single.csv", "--no-otter")
    carol = [r for r in rows if r["student"] == "carol"]
    assert [r["question"] for r in carol] == QUESTIONS and {r["points"] for r in carol} == {"0"}
    assert all("is not a readable .ipynb notebook" in r["feedback"] for r in carol)
    assert {r["points"] for r in rows if r["student"] == "dora"} == {str(PER_QUESTION)}
