"""``refreekv-edu grade SUBMISSIONS --autograder OUT/autograder --csv grades.csv``: a folder of notebooks to a CSV.

For each submitted ``.ipynb`` (``SUBMISSIONS/<student>.ipynb`` or ``SUBMISSIONS/<student>/<any>.ipynb``), two
graders run:

1. ``otter run`` (no containers) with the assignment's autograder zip, in a worker process group killed after
   ``submission_timeout_s``: otter's own feedback and score. It runs in the student's kernel, so a submission
   can tamper with it (``SOLUTIONS``, a monkeypatched grader);
2. the trusted re-grade, :func:`refreekv_edu.exercises.trusted.regrade_notebook`: this process (the trusted
   parent) re-executes the notebook's code cells in a fresh child per question and grades the named function
   there with a process-level kill, at the hidden seed, group by group. **Its points are the ones in the CSV.**

The CSV has one row per (student, question): ``student, assignment, question, points, possible, total,
feedback, otter_points, tampered``: ``points`` from the trusted re-grade (:data:`GROUP_POINTS` per group passed
entirely), ``total`` the student's sum over the assignment, ``feedback`` the diagnostic message of the first
failing case, ``otter_points`` otter's score for that question (empty when otter gave none: a hang, a crash)
and ``tampered`` = 1 when otter's score exceeds the trusted one.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..progress import progress_bar
from .assign import MANIFEST, require_otter

CSV_COLUMNS = ["student", "assignment", "question", "points", "possible", "total", "feedback", "otter_points", "tampered"]
#: Cells otter adds to the student notebook (its init and check cells): the trusted re-grade leaves them out.
OTTER_LINE_PREFIXES = ("# Initialize Otter", "import otter", "grader = otter.Notebook(", "grader.check(",
                       "grader.check_all(", "grader.export(")


@dataclass
class Outcome:
    """What one grader said about one submission: per question (points, feedback), or why it said nothing."""

    points: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


def load_manifest(autograder: Path) -> dict[str, Any]:
    """``OUT/autograder/course.json`` as written by ``refreekv-edu assign``; a clear error when missing."""
    path = Path(autograder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: pass the autograder folder written by `refreekv-edu assign OUT`")
    return json.loads(path.read_text(encoding="utf-8"))


def discover(submissions: Path) -> list[tuple[str, Path]]:
    """``(student, notebook)`` for ``SUBMISSIONS/<student>.ipynb`` and ``SUBMISSIONS/<student>/*.ipynb``, sorted."""
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise ValueError(f"{submissions} is not a folder of submitted notebooks")
    found = [(p.stem, p) for p in sorted(submissions.glob("*.ipynb"))]
    for folder in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [(f"{folder.name}/{p.stem}" if len(list(folder.glob("*.ipynb"))) > 1 else folder.name, p)
                  for p in sorted(folder.glob("*.ipynb"))]
    if not found:
        raise ValueError(f"no .ipynb submissions in {submissions}")
    return found


def assignment_of(notebook: Path, manifest: dict[str, Any]) -> str:
    """The assignment a submission belongs to: otter's metadata name, else the file name's ``exNN`` prefix."""
    names = list(manifest["assignments"])
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
        name = meta.get("otter", {}).get("assignment_name")
    except (OSError, ValueError, AttributeError):
        name = None
    if name in names:
        return name
    prefix = notebook.name.split("_", 1)[0]
    matches = [n for n in names if n.split("_", 1)[0] == prefix]
    if len(matches) == 1:
        return matches[0]
    if len(names) == 1:
        return names[0]
    raise ValueError(f"cannot tell which assignment {notebook} is (assignments: {', '.join(names)}); "
                     "pass --assignment NAME when the folder holds one assignment")


def assign_submissions(
    found: list[tuple[str, Path]], manifest: dict[str, Any], assignment: str | None = None,
) -> list[tuple[str, Path, str | None, str]]:
    """``(student, notebook, assignment or None, why)`` for each submission.

    ``assignment`` (``--assignment``) names it for all; otherwise each notebook's metadata or file name does, and a
    notebook that says nothing (an unreadable file, a renamed copy) takes the one assignment every other
    submission of the folder belongs to. ``None`` with the reason when even that cannot tell: that submission
    scores 0, the others are graded.
    """
    if assignment is not None:
        if assignment not in manifest["assignments"]:
            raise ValueError(f"unknown assignment {assignment!r}; this autograder has: "
                             f"{', '.join(manifest['assignments'])}")
        return [(student, nb, assignment, "") for student, nb in found]
    named: list[tuple[str, Path, str | None, str]] = []
    for student, nb in found:
        try:
            named.append((student, nb, assignment_of(nb, manifest), ""))
        except ValueError as exc:
            named.append((student, nb, None, str(exc)))
    known = {a for _, _, a, _ in named if a is not None}
    if len(known) == 1:
        only = known.pop()
        named = [(s, nb, a or only, "") for s, nb, a, _ in named]
    return named


def _run_worker(args: list[str], timeout_s: float) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m refreekv_edu.course.batch ARGS RESULT`` in its own process group; (its JSON result, error)."""
    env = {k: v for k, v in os.environ.items() if k != "REFREEKV_SOLUTIONS"}
    with tempfile.TemporaryDirectory(prefix="refreekv-worker-") as tmp, tempfile.TemporaryFile("w+") as log:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "refreekv_edu.course.batch", *args, str(result_path)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True, cwd=tmp)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"did not finish within {timeout_s:.0f} s (stopped)"
        finally:
            _kill_group(proc)  # the kernel otter started, or a grandchild a submission left behind
        if proc.returncode == 0 and result_path.is_file():
            return json.loads(result_path.read_text(encoding="utf-8")), ""
        log.seek(0)
        tail = " | ".join(log.read().strip().splitlines()[-3:])
    return None, f"exited with status {proc.returncode} without a result ({tail[-300:]})"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def otter_grade(notebook: Path, zip_path: Path, timeout_s: float) -> Outcome:
    """``otter run`` on one submission (in a worker process): otter's score per question."""
    start = time.monotonic()
    result, error = _run_worker(["otter", str(notebook), str(zip_path)], timeout_s)
    outcome = Outcome(error=error, seconds=time.monotonic() - start)
    if result is not None:
        outcome.points = {q: float(v) for q, v in result["points"].items()}
    return outcome


def trusted_grade(
    notebook: Path, questions: list[str], seed: int, groups: list[str], group_points: dict[str, int],
    time_limit_s: float,
) -> Outcome:
    """The trusted re-grade of one submission: points per question from the groups it passed entirely.

    Runs here, in the trusted parent: :func:`~refreekv_edu.exercises.trusted.regrade_notebook` re-executes the
    notebook's code cells (otter's init and check cells left out) in a fresh child per question, with a
    process-level kill, so nothing the submission does reaches this process or the next question.
    """
    from ..exercises.trusted import regrade_notebook

    start = time.monotonic()
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix="refreekv-regrade-") as tmp:
        clean = strip_otter_cells(notebook, Path(tmp) / notebook.name)
        results = regrade_notebook(clean, {q: q for q in questions}, seed=seed, groups=groups,
                                   time_limit_s=time_limit_s)
    for q in questions:
        result = results.get(q)
        if result is None:
            outcome.points[q], outcome.feedback[q] = 0.0, "not graded (no result from the trusted re-grade)"
            continue
        by_group = result.by_group()
        outcome.points[q] = float(sum(group_points.get(g, 0) for g, (ok, n) in by_group.items() if n > 0 and ok == n))
        outcome.feedback[q] = str(result.message)
    outcome.seconds = time.monotonic() - start
    return outcome


def unreadable_reason(notebook: Path) -> str:
    """Why ``notebook`` is not a notebook the graders can run (``""`` when it is one): the re-grade's own reader."""
    from ..exercises.trusted import notebook_code

    try:
        notebook_code(Path(notebook))
    except ValueError as exc:
        return f"{exc}; hand in the .ipynb file itself"
    return ""


def grade_submission(
    student: str, notebook: Path, assignment: str, manifest: dict[str, Any], autograder: Path,
    time_limit_s: float, submission_timeout_s: float, use_otter: bool,
) -> list[dict[str, Any]]:
    """The CSV rows of one submission: one per question of its assignment.

    A notebook the graders cannot read scores 0 on every question, with the reason as feedback; otter runs only
    on readable ones.
    """
    info = manifest["assignments"][assignment]
    questions = info["questions"]
    reason = unreadable_reason(notebook)
    if reason:
        otter = Outcome(error=reason)
        trusted = Outcome(points=dict.fromkeys(questions, 0.0), feedback=dict.fromkeys(questions, reason))
    else:
        otter = (otter_grade(notebook, Path(autograder) / info["zip"], submission_timeout_s) if use_otter
                 else Outcome(error="not run (--no-otter)"))
        trusted = trusted_grade(notebook, questions, manifest["hidden_seed"], list(manifest["group_points"]),
                                manifest["group_points"], time_limit_s)
    if otter.error and use_otter:
        print(f"{student}: otter run {otter.error}", file=sys.stderr)
    total = sum(trusted.points.values())
    rows = []
    for q in questions:
        otter_points = otter.points.get(q)
        rows.append({
            "student": student, "assignment": assignment, "question": q, "points": _num(trusted.points[q]),
            "possible": info["points"][q], "total": _num(total), "feedback": trusted.feedback[q],
            "otter_points": "" if otter_points is None else _num(otter_points),
            "tampered": int(otter_points is not None and otter_points > trusted.points[q] + 1e-9),
        })
    return rows


def problem_row(student: str, assignment: str, why: str) -> dict[str, Any]:
    """The one row of a submission that could not be graded at all (which assignment it is, say): 0 points."""
    print(f"{student}: not graded: {why}", file=sys.stderr)
    return {"student": student, "assignment": assignment, "question": "", "points": 0, "possible": 0, "total": 0,
            "feedback": f"not graded: {why}", "otter_points": "", "tampered": 0}


def grade_folder(
    submissions: Path, autograder: Path, csv_path: Path, time_limit_s: float = 5.0,
    submission_timeout_s: float = 300.0, use_otter: bool = True, progress: bool = True,
    assignment: str | None = None, jobs: int = 1,
) -> list[dict[str, Any]]:
    """Grade every submission of ``submissions`` and write ``csv_path``; return the rows written.

    One submission's trouble (an unreadable file, an unknown assignment, an error in the graders) costs only that
    submission's points: it gets rows that say why, and the others are graded. The CSV is rewritten after every
    submission, so an interrupted batch keeps what it graded. ``jobs`` submissions are graded at once (each one's
    work runs in its own child processes, so threads here only wait on them); the rows keep the folder's order.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive whole number of submissions graded at once, got {jobs!r}")
    manifest = load_manifest(autograder)
    if use_otter:
        require_otter()
    named = assign_submissions(discover(submissions), manifest, assignment)
    csv_path = Path(csv_path)
    try:  # before any grading: the header alone, so an unwritable --csv fails now, not after the first student
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(csv_path, [])
    except OSError as exc:
        raise ValueError(f"cannot write the CSV {csv_path} ({exc.strerror or exc}); choose another --csv") from None

    def one(student: str, notebook: Path, name: str | None, why: str) -> list[dict[str, Any]]:
        if name is None:
            return [problem_row(student, "", why)]
        try:
            return grade_submission(student, notebook, name, manifest, autograder, time_limit_s,
                                    submission_timeout_s, use_otter)
        except Exception as exc:  # a grader bug must not cost the rest of the class their grades
            return [problem_row(student, name, f"the graders failed ({type(exc).__name__}: {exc})")]

    graded: list[list[dict[str, Any]] | None] = [None] * len(named)
    bar = progress_bar(len(named), "grading", progress, unit="submission")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, *entry): i for i, entry in enumerate(named)}
        for future in as_completed(futures):
            i = futures[future]
            graded[i] = future.result()
            _write_csv(csv_path, [row for got in graded if got for row in got])
            bar.set_postfix_str(f"{named[i][0]}: {graded[i][0]['total']}")
            bar.update(1)
    bar.close()
    return [row for got in graded if got for row in got]


def _write_csv(csv_path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 4)


# ------------------------------------------------------------------------------------- worker processes
def _otter_worker(notebook: str, zip_path: str) -> dict[str, Any]:
    import contextlib
    import io

    import otter.run

    with contextlib.redirect_stdout(io.StringIO()):
        results = otter.run.main(notebook, autograder=zip_path, output_dir=None, no_logo=True)
    return {"points": {name: results.get_score(name) for name in results.test_files}}


def strip_otter_cells(notebook: Path, dest: Path) -> Path:
    """A copy of ``notebook`` without otter's init/check cells (every line one of otter's), for the re-grade."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    kept = []
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        lines = [line.strip() for line in src.splitlines() if line.strip()]
        if cell.get("cell_type") == "code" and lines and all(line.startswith(OTTER_LINE_PREFIXES) for line in lines):
            continue
        kept.append(cell)
    nb["cells"] = kept
    dest.write_text(json.dumps(nb), encoding="utf-8")
    return dest


def main(argv: list[str]) -> int:
    """Worker entry: ``otter NOTEBOOK ZIP RESULT_JSON``: otter run's points per question, written to RESULT_JSON."""
    kind, notebook, zip_path, result_path = argv
    if kind != "otter":
        raise SystemExit(f"unknown worker {kind!r}")
    Path(result_path).write_text(json.dumps(_otter_worker(notebook, zip_path)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
