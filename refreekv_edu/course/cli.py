"""The ``assign`` and ``grade`` subcommands of ``refreekv-edu`` (the ``course`` extra: otter-grader)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_assign(args: argparse.Namespace) -> int:
    """Build the otter masters and run ``otter assign``; print where everything went."""
    from .assign import assign

    manifest = assign(Path(args.out), args.exercises, args.hidden_seed, run_tests=not args.no_run_tests)
    out = Path(args.out).resolve()
    for name, info in manifest["assignments"].items():
        points = sum(info["points"].values())
        print(f"{name}: {len(info['questions'])} questions, {points} points -> student/{name}.ipynb, "
              f"autograder/{info['zip']}")
    print(f"students get:     {out / 'student'}")
    print(f"keep private:     {out / 'autograder'} (hidden seed {manifest['hidden_seed']}), {out / 'masters'}")
    print(f"grade with:       refreekv-edu grade SUBMISSIONS --autograder {out / 'autograder'} --csv grades.csv")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade a folder of submitted notebooks to a CSV (trusted points, otter's feedback and a tamper flag)."""
    from .batch import grade_folder

    if args.time_limit <= 0 or args.submission_timeout <= 0:
        raise ValueError("--time-limit and --submission-timeout must be positive seconds")
    rows = grade_folder(Path(args.submissions), Path(args.autograder), Path(args.csv), time_limit_s=args.time_limit,
                        submission_timeout_s=args.submission_timeout, use_otter=not args.no_otter,
                        progress=not args.no_progress, assignment=args.assignment, jobs=args.jobs)
    totals: dict[str, tuple[float, int]] = {}
    for row in rows:
        got, possible = totals.get(row["student"], (0.0, 0))
        totals[row["student"]] = (got + float(row["points"]), possible + int(row["possible"]))
    for student, (got, possible) in totals.items():
        mine = [r for r in rows if r["student"] == student]
        flag = "  (otter's score was higher: tampered grader?)" if any(r["tampered"] for r in mine) else ""
        if any(not r["question"] for r in mine):
            flag = f"  ({mine[0]['feedback']})"
        print(f"{student:<24} {got:g} / {possible}{flag}")
    print(f"wrote {args.csv} ({len(rows)} rows)")
    return 0


def add_course_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``assign`` and ``grade`` on the ``refreekv-edu`` parser."""
    p = sub.add_parser(
        "assign", help="otter-grader assignments from the exercise notebooks (student + autograder versions)",
        description="Build otter-grader master notebooks from the exercise notebooks and the instructor solutions "
                    "(points per case group, public and hidden tests), then run `otter assign`: OUT/student/ "
                    "(stubs, public tests) and OUT/autograder/ (solutions, hidden tests, autograder zips). "
                    "Needs the course extra: pip install 'refreekv_edu[course]'.")
    p.add_argument("out", help="output folder (its student/, autograder/ and masters/ are replaced)")
    p.add_argument("--exercises", nargs="+", metavar="exNN", help="exercise notebooks to build (default: all)")
    p.add_argument("--hidden-seed", type=int, default=None, help="seed of the hidden cases (default: random)")
    p.add_argument("--no-run-tests", action="store_true",
                   help="skip otter's check that the solutions notebook passes every test (faster)")
    p.set_defaults(func=cmd_assign)

    p = sub.add_parser(
        "grade", help="grade a folder of submitted notebooks to a CSV (trusted re-grade + otter run)",
        description="For every submitted .ipynb: `otter run` (no containers) for otter's feedback, and the "
                    "trusted re-grade (a fresh process per question, process-level time limit) whose points "
                    "go to the CSV: student, assignment, question, points, possible, total, feedback, "
                    "otter_points, tampered.")
    p.add_argument("submissions", help="folder of <student>.ipynb (or <student>/<notebook>.ipynb)")
    p.add_argument("--autograder", required=True, help="the OUT/autograder folder written by `refreekv-edu assign`")
    p.add_argument("--csv", required=True, help="CSV file to write")
    p.add_argument("--time-limit", type=float, default=5.0, help="seconds one call of a function may run (default 5)")
    p.add_argument("--submission-timeout", type=float, default=300.0,
                   help="wall-clock seconds `otter run` may take per submission (default 300)")
    p.add_argument("--assignment", default=None, metavar="exNN_name",
                   help="the assignment every submission belongs to (default: read from each notebook's otter "
                        "metadata or file name)")
    p.add_argument("--jobs", type=int, default=1,
                   help="submissions graded at once (default 1; up to the number of CPU cores helps)")
    p.add_argument("--no-otter", action="store_true", help="skip `otter run` (trusted points only, no otter score)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_grade)
