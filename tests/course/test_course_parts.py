"""The parts of the course workflow that need neither otter nor the grading engine (issue 18)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from refreekv_edu.course import assign, batch, masters
from refreekv_edu.exercises import solutions

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "notebooks" / "exercises"


def test_exercise_notebooks_are_found_and_split() -> None:
    assert masters.exercise_notebooks_dir() == EXERCISES
    paths = masters.find_notebooks()
    assert [p.name.split("_")[0] for p in paths] == ["ex01", "ex02", "ex03"]
    assert masters.find_notebooks(["ex02"]) == [EXERCISES / "ex02_halting_rule.ipynb"]
    with pytest.raises(ValueError, match="unknown exercise notebook.*ex09"):
        masters.find_notebooks(["ex09"])
    nb = masters.read_exercise_notebook(EXERCISES / "ex03_gqa_and_capstone.ipynb")
    assert [q.name for q in nb.questions] == [
        "expand_kv", "group_scores", "model_budget", "decide_layer", "official_script_layer"]
    assert nb.questions[3].text.startswith("## 3.4 Capstone")
    assert nb.intro[0].startswith("# Exercises 3") and nb.outro[0].startswith("## Recap")


def _exec_solution_cell(question: masters.Question, defined: set[str], env: dict) -> None:
    exec(masters.solution_cell(question, defined), env)


def test_solution_cells_are_the_instructor_solutions_with_nested_helpers() -> None:
    """ex03's cells run on their own (recency_keep etc. nested) and agree with solutions.py on real inputs."""
    nb = masters.read_exercise_notebook(EXERCISES / "ex03_gqa_and_capstone.ipynb")
    defined = {q.name for q in nb.questions}
    env: dict = {"np": np}
    for q in nb.questions:
        _exec_solution_cell(q, defined, env)
    assert "recency_keep" not in env and "halting_curve" not in env  # nested, not notebook globals
    rng = np.random.default_rng(3)
    queries, keys = rng.normal(size=(4, 3, 8)).astype(np.float32), rng.normal(size=(2, 24, 8)).astype(np.float32)
    got = env["decide_layer"](queries, keys, 0.05, 2, 5)
    np.testing.assert_array_equal(got, solutions.decide_layer(queries, keys, 0.05, 2, 5))
    got = env["official_script_layer"](queries, keys, 0.05, 3)
    np.testing.assert_array_equal(got, solutions.official_script_layer(queries, keys, 0.05, 3))
    last_rows = rng.dirichlet(np.ones(16), size=(3, 2)).astype(np.float32)
    budgets, mean = env["model_budget"](last_rows, 2, 0.1, (0,))
    want_budgets, want_mean = solutions.model_budget(last_rows, 2, 0.1, (0,))
    np.testing.assert_array_equal(budgets, want_budgets)
    assert budgets.shape == (3,) and budgets[0] == 1.0 and mean == want_mean and mean < 1


def test_solution_cell_strips_to_exactly_the_stub() -> None:
    """Otter's student version of each cell (solution removed, prompt kept) is the notebook's stub, line by line."""
    pytest.importorskip("otter", reason="needs the 'course' extra")
    from otter.assign.solutions import replace_solutions

    for path in masters.find_notebooks():
        nb = masters.read_exercise_notebook(path)
        defined = {q.name for q in nb.questions}
        for q in nb.questions:
            cell = masters.solution_cell(q, defined)
            assert "\n".join(replace_solutions(cell.split("\n"), "python")) == q.stub.rstrip("\n")


def test_master_has_config_questions_points_and_hidden_tests() -> None:
    nb = masters.read_exercise_notebook(EXERCISES / "ex01_window_scores_and_ranking.ipynb")
    master = masters.build_master(nb, hidden_seed=4242)
    raw = [c["source"] for c in master["cells"] if c["cell_type"] == "raw"]
    assert raw[0].startswith("# ASSIGNMENT CONFIG\nname: ex01_window_scores_and_ranking\n")
    questions = [s for s in raw if s.startswith("# BEGIN QUESTION")]
    assert questions == [f"# BEGIN QUESTION\nname: {n}\npoints: [0, 0, 1, 1, 1]"
                         for n in ("window_scores", "snapkv_pool", "rank_candidates")]
    tests = [c["source"] for c in master["cells"] if c["cell_type"] == "code" and "assert_group" in c["source"]]
    assert len(tests) == 15
    hidden = [t for t in tests if t.startswith("# HIDDEN\n")]
    assert len(hidden) == 9 and all("seed=4242" in t for t in hidden)
    assert {ast.parse(t).body[0].name for t in hidden} == {"test_hidden_basic", "test_hidden_edge", "test_hidden_adversarial"}
    assert all("seed=0" in t for t in tests if t not in hidden)
    code = "\n".join(c["source"] for c in master["cells"] if c["cell_type"] == "code")
    assert "SOLUTIONS" not in code and "results[" not in code and "instructor=" not in code


def test_assert_group_raises_with_the_diagnostic(monkeypatch: pytest.MonkeyPatch) -> None:
    from refreekv_edu.course import otter_tests

    with pytest.raises(AssertionError, match="not defined as a function"):
        otter_tests.assert_group("halting_curve", None, "basic")


def test_strip_otter_cells_keeps_the_students_code(tmp_path: Path) -> None:
    cells = [
        {"cell_type": "code", "source": '# Initialize Otter\nimport otter\ngrader = otter.Notebook("x.ipynb")'},
        {"cell_type": "code", "source": "def f(x):\n    return x"},
        {"cell_type": "code", "source": 'grader.check("f")'},
        {"cell_type": "code", "source": 'grader.check("f")\ndef g():\n    return 1'},  # student code kept
        {"cell_type": "markdown", "source": "grader.check"},
    ]
    (tmp_path / "s.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}}))
    out = batch.strip_otter_cells(tmp_path / "s.ipynb", tmp_path / "clean.ipynb")
    kept = [c["source"] for c in json.loads(out.read_text())["cells"]]
    assert kept == [cells[1]["source"], cells[3]["source"], cells[4]["source"]]


def test_discover_and_assignment_of(tmp_path: Path) -> None:
    manifest = {"assignments": {"ex01_window_scores_and_ranking": {}, "ex02_halting_rule": {}}}
    (tmp_path / "alice.ipynb").write_text(json.dumps({"metadata": {"otter": {"assignment_name": "ex02_halting_rule"}}}))
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "ex01_window_scores_and_ranking.ipynb").write_text(json.dumps({"metadata": {}}))
    found = batch.discover(tmp_path)
    assert [s for s, _ in found] == ["alice", "bob"]
    assert [batch.assignment_of(p, manifest) for _, p in found] == ["ex02_halting_rule", "ex01_window_scores_and_ranking"]
    (tmp_path / "carol.ipynb").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="cannot tell which assignment"):
        batch.assignment_of(tmp_path / "carol.ipynb", manifest)
    with pytest.raises(ValueError, match="no .ipynb submissions"):
        batch.discover(_empty(tmp_path))
    with pytest.raises(ValueError, match="course.json not found"):
        batch.load_manifest(tmp_path)


def test_assign_submissions_infers_the_one_assignment_or_says_why(tmp_path: Path) -> None:
    manifest = {"assignments": {"ex01_window_scores_and_ranking": {}, "ex02_halting_rule": {}}}
    ex02 = {"metadata": {"otter": {"assignment_name": "ex02_halting_rule"}}, "cells": []}
    (tmp_path / "alice.ipynb").write_text(json.dumps(ex02))
    (tmp_path / "carol.ipynb").write_text("{not json")
    named = batch.assign_submissions(batch.discover(tmp_path), manifest)
    assert [(s, a) for s, _, a, _ in named] == [("alice", "ex02_halting_rule"), ("carol", "ex02_halting_rule")]
    (tmp_path / "ex01_bob.ipynb").write_text(json.dumps({"metadata": {}, "cells": []}))
    named = {s: (a, why) for s, _, a, why in batch.assign_submissions(batch.discover(tmp_path), manifest)}
    assert named["ex01_bob"] == ("ex01_window_scores_and_ranking", "")
    assert named["carol"][0] is None and "--assignment" in named["carol"][1]  # two assignments: no guess
    forced = batch.assign_submissions(batch.discover(tmp_path), manifest, "ex02_halting_rule")
    assert {a for _, _, a, _ in forced} == {"ex02_halting_rule"}
    with pytest.raises(ValueError, match="unknown assignment 'ex09'"):
        batch.assign_submissions(batch.discover(tmp_path), manifest, "ex09")
    assert "is not a readable .ipynb notebook (JSONDecodeError" in batch.unreadable_reason(tmp_path / "carol.ipynb")
    (tmp_path / "list.ipynb").write_text('{"cells": 3}')
    assert "is not a readable .ipynb notebook (TypeError" in batch.unreadable_reason(tmp_path / "list.ipynb")
    assert batch.unreadable_reason(tmp_path / "alice.ipynb") == ""


def test_an_unwritable_csv_fails_before_any_grading(tmp_path: Path) -> None:
    (tmp_path / "ag").mkdir()
    (tmp_path / "ag" / "course.json").write_text(json.dumps({"assignments": {"ex02_halting_rule": {}},
                                                             "group_points": {}, "hidden_seed": 1}))
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "alice.ipynb").write_text(json.dumps({"metadata": {}, "cells": []}))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the CSV .*; choose another --csv"):
        batch.grade_folder(tmp_path / "subs", tmp_path / "ag", tmp_path / "file" / "grades.csv", use_otter=False,
                           progress=False)
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a positive whole number"):
            batch.grade_folder(tmp_path / "subs", tmp_path / "ag", tmp_path / "g.csv", use_otter=False, jobs=jobs)


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_out_must_be_writable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        assign.check_writable(tmp_path / "file")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(OSError, match="is not writable"):
            assign.check_writable(tmp_path / "ro" / "out")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_cli_reports_bad_out_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("otter", reason="needs the 'course' extra")
    from refreekv_edu.cli import main

    (tmp_path / "file").write_text("x")
    assert main(["assign", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refreekv-edu assign: error:") and "is not a folder" in err and "\n" not in err
    assert main(["grade", str(tmp_path), "--autograder", str(tmp_path), "--csv", str(tmp_path / "g.csv")]) == 2
    assert "course.json not found" in capsys.readouterr().err
