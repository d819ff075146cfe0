"""Otter master notebooks built from the package's exercise notebooks (one source of truth).

An exercise notebook (``notebooks/exercises/exNN_*.ipynb``) holds the text, a stub cell per exercise function
and a check cell. :func:`build_master` turns it into an otter-grader 7 master notebook:

- a ``# ASSIGNMENT CONFIG`` raw cell (the assignment ``name`` is the notebook's stem, which ``otter run``
  checks against the submission's metadata);
- the intro text, then a setup cell without the ``SOLUTIONS`` switch (``import numpy as np`` and
  ``from refreekv_edu import exercises as ex``);
- per stub, one ``# BEGIN QUESTION`` block named after the function with ``points`` per test case: the stub's
  ``def`` line and docstring, the instructor solution's body from :mod:`refreekv_edu.exercises.solutions`
  (``inspect.getsource``) between ``# BEGIN SOLUTION NO PROMPT`` / ``# END SOLUTION`` and the stub's own body as
  the prompt, so the student version is exactly the stub; helpers the solution calls that the notebook does not
  define (e.g. ``recency_keep`` inside ex03's ``decide_layer``) are nested inside the solution block;
- the tests (otter's exception-based format): two public tests (``basic`` and ``edge`` at seed 0, worth 0
  points: what ``grader.check`` shows the student) and one ``# HIDDEN`` test per group (``basic``, ``edge``,
  ``adversarial`` at the hidden seed, :data:`GROUP_POINTS` each) that exist only in the autograder.

The original check cells, the summary cell and anything mentioning ``SOLUTIONS`` are left out.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Points of each hidden group per question (each group is one otter test case: partial credit per group).
GROUP_POINTS: dict[str, int] = {"basic": 1, "edge": 1, "adversarial": 1}
#: The groups the public tests run (seed 0), shown to the student by ``grader.check``; worth 0 points.
PUBLIC_GROUPS: tuple[str, ...] = ("basic", "edge")
PUBLIC_SEED = 0
#: Lines a setup cell of the package notebooks may hold that the master must not (the instructor switch).
FORBIDDEN_WORDS = ("SOLUTIONS", "REFREEKV_SOLUTIONS", "instructor=")

SETUP_SOURCE = "import numpy as np\n\nfrom refreekv_edu import exercises as ex"
GRADING_NOTE = (
    "**How this assignment is graded.** After each function, run its `grader.check(\"<name>\")` cell: it runs the "
    "public `basic` and `edge` cases and shows the first wrong case with a hint. Your points come from hidden "
    "cases (other random inputs and adversarial ones), one point per group (`basic`, `edge`, `adversarial`) "
    "that your function gets entirely right. Submit this notebook (`.ipynb`) as it is."
)


@dataclass
class Question:
    """One exercise function of a notebook.

    Attributes:
        name: the function's name, also the otter question name (``grader.check(name)``).
        text: the markdown cell that states it.
        stub: the stub cell's source (``def name(...): docstring; # YOUR CODE HERE; raise NotImplementedError``).
    """

    name: str
    text: str
    stub: str


@dataclass
class ExerciseNotebook:
    """An exercise notebook split into what the master needs."""

    path: Path
    intro: list[str]
    questions: list[Question]
    outro: list[str]

    @property
    def stem(self) -> str:
        return self.path.stem


def exercise_notebooks_dir() -> Path:
    """The folder of the exercise notebooks: in the wheel (``refreekv_edu/_notebooks/exercises``), else the repo's."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_notebooks" / "exercises", package.parent / "notebooks" / "exercises"):
        if candidate.is_dir() and any(candidate.glob("ex*.ipynb")):
            return candidate
    raise FileNotFoundError(
        "the exercise notebooks were not found (neither refreekv_edu/_notebooks/exercises in the installed "
        "package nor notebooks/exercises next to it)"
    )


def find_notebooks(exercises: list[str] | None = None, folder: Path | None = None) -> list[Path]:
    """The exercise notebooks ``exNN_*.ipynb`` named by ``exercises`` (e.g. ``["ex01", "ex03"]``; all when None)."""
    folder = folder or exercise_notebooks_dir()
    found = {p.name.split("_", 1)[0]: p for p in sorted(folder.glob("ex[0-9]*.ipynb"))}
    if not exercises:
        return list(found.values())
    unknown = [e for e in exercises if e not in found]
    if unknown:
        raise ValueError(f"unknown exercise notebook(s) {', '.join(unknown)}; available: {', '.join(found)}")
    return [found[e] for e in exercises]


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _stub_name(source: str) -> str | None:
    """The function a stub cell defines (one ``def`` whose body raises NotImplementedError), else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    raises = [n for n in ast.walk(tree.body[0]) if isinstance(n, ast.Raise)]
    if not any("NotImplementedError" in ast.unparse(r) for r in raises):
        return None
    return tree.body[0].name


def read_exercise_notebook(path: Path) -> ExerciseNotebook:
    """Split an exercise notebook: intro markdown, the questions (text + stub), the closing markdown."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    intro: list[str] = []
    questions: list[Question] = []
    pending: list[str] = []  # markdown seen since the last stub: the next question's text (or the outro)
    for cell in cells:
        src = _source(cell)
        if cell["cell_type"] == "markdown":
            if src.strip() != "## Summary":  # the summary cell lists `results`, which the master drops
                pending.append(src)
            continue
        if cell["cell_type"] != "code":
            continue
        name = _stub_name(src)
        if name is None:
            if not questions:
                intro, pending = intro + pending, []
            continue  # setup, check and summary cells: the master writes its own
        questions.append(Question(name, "\n\n".join(pending) or f"## `{name}`", src))
        pending = []
    outro = pending
    if not questions:
        raise ValueError(f"{path} has no stub cell (a def whose body raises NotImplementedError)")
    return ExerciseNotebook(Path(path), intro, questions, outro)


# ------------------------------------------------------------------------------------------- solution code
def _solutions_module() -> tuple[Any, ast.Module, str]:
    from ..exercises import solutions

    source = inspect.getsource(solutions)
    return solutions, ast.parse(source), source


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """Module-level functions and constants of the solutions module, by name."""
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _helpers(name: str, defined: set[str], top: dict[str, ast.stmt]) -> list[str]:
    """Names of the solutions module's functions/constants ``name`` needs that the notebook does not define."""
    needed: set[str] = set()
    todo = [name]
    while todo:
        for used in _names_used(top[todo.pop()]):
            if used in top and used not in defined and used not in needed and used != name:
                needed.add(used)
                todo.append(used)
    order = list(top)
    return sorted(needed, key=order.index)


def _segment(lines: list[str], node: ast.stmt) -> str:
    return "\n".join(lines[node.lineno - 1 : node.end_lineno])


def _body_source(lines: list[str], fn: ast.FunctionDef) -> str:
    """The function body's source without its docstring, dedented."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return textwrap.dedent("\n".join(lines[body[0].lineno - 1 : fn.end_lineno]))


def solution_cell(question: Question, defined: set[str]) -> str:
    """The master's code cell of ``question``: the stub's header, the solution between markers, the stub as prompt."""
    module, tree, source = _solutions_module()
    top = _top_level(tree)
    if question.name not in top or not isinstance(top[question.name], ast.FunctionDef):
        raise ValueError(f"no instructor solution {question.name!r} in {module.__name__}")
    lines = source.splitlines()
    parts = [_segment(lines, top[h]) for h in _helpers(question.name, defined, top)]
    parts.append(_body_source(lines, top[question.name]))  # type: ignore[arg-type]
    solution = textwrap.indent("\n\n".join(parts), "    ")

    stub_fn = ast.parse(question.stub).body[0]
    stub_lines = question.stub.splitlines()
    first = stub_fn.body[1] if ast.get_docstring(stub_fn) is not None else stub_fn.body[0]  # type: ignore[attr-defined]
    header = "\n".join(stub_lines[: first.lineno - 1])
    # Keep the "# YOUR CODE HERE" comment above the first statement in the prompt.
    while header.splitlines() and header.splitlines()[-1].strip().startswith("#"):
        header = "\n".join(header.splitlines()[:-1])
    prompt = "\n".join(stub_lines[len(header.splitlines()) :])
    if '"""' in prompt:
        raise ValueError(f"the stub of {question.name!r} holds a triple-quoted string after its docstring")
    return (
        f"{header}\n    # BEGIN SOLUTION NO PROMPT\n{solution}\n    # END SOLUTION\n"
        f'    """ # BEGIN PROMPT\n{prompt}\n    """ # END PROMPT'
    )


# -------------------------------------------------------------------------------------------------- tests
def test_cell(question: str, group: str, seed: int | str, hidden: bool) -> str:
    """One otter exception-based test: grade ``question``'s ``group`` cases at ``seed`` with the package's checks."""
    head = "# HIDDEN\n" if hidden else ""
    kind = "hidden" if hidden else "public"
    return (
        f"{head}def test_{kind}_{group}({question}):\n"
        "    from refreekv_edu.course.otter_tests import assert_group\n"
        f"    assert_group({question!r}, {question}, {group!r}, seed={seed})"
    )


def question_points(public: tuple[str, ...] = PUBLIC_GROUPS) -> list[int]:
    """Points per test case, in the order :func:`build_master` writes them: public (0 each), then hidden."""
    return [0] * len(public) + list(GROUP_POINTS.values())


# ------------------------------------------------------------------------------------------------ notebook
def _cell(kind: str, source: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def assignment_config(name: str, run_tests: bool) -> str:
    """The ``# ASSIGNMENT CONFIG`` cell (YAML)."""
    return "\n".join(
        [
            "# ASSIGNMENT CONFIG",
            f"name: {name}",
            "init_cell: true",
            "check_all_cell: false",
            "export_cell: false",
            f"run_tests: {'true' if run_tests else 'false'}",
            "tests:",
            "  files: false",
            "  ok_format: false",
            "generate:",
            "  pdf: false",
            "  show_stdout: true",
            "  show_hidden: false",
        ]
    )


def build_master(notebook: ExerciseNotebook, hidden_seed: int, run_tests: bool = True) -> dict[str, Any]:
    """The otter master notebook (nbformat 4 as a dict) of ``notebook``; hidden tests use ``hidden_seed``."""
    defined = {q.name for q in notebook.questions}
    points = question_points()
    cells = [_cell("raw", assignment_config(notebook.stem, run_tests))]
    cells += [_cell("markdown", text) for text in notebook.intro]
    cells.append(_cell("markdown", GRADING_NOTE))
    cells.append(_cell("code", SETUP_SOURCE))
    for q in notebook.questions:
        cells.append(_cell("raw", f"# BEGIN QUESTION\nname: {q.name}\npoints: {json.dumps(points)}"))
        cells.append(_cell("markdown", q.text))
        cells.append(_cell("raw", "# BEGIN SOLUTION"))
        cells.append(_cell("code", solution_cell(q, defined)))
        cells.append(_cell("raw", "# END SOLUTION"))
        cells.append(_cell("raw", "# BEGIN TESTS"))
        cells += [_cell("code", test_cell(q.name, g, PUBLIC_SEED, hidden=False)) for g in PUBLIC_GROUPS]
        cells += [_cell("code", test_cell(q.name, g, hidden_seed, hidden=True)) for g in GROUP_POINTS]
        cells.append(_cell("raw", "# END TESTS"))
        cells.append(_cell("raw", "# END QUESTION"))
    cells += [_cell("markdown", text) for text in notebook.outro]
    for cell in cells:
        if cell["cell_type"] == "code" and any(w in cell["source"] for w in FORBIDDEN_WORDS):
            raise ValueError(f"a master cell of {notebook.stem} mentions the instructor switch: {cell['source'][:80]}")
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }
