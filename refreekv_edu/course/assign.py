"""``refreekv-edu assign OUT``: otter master notebooks from the exercises, then ``otter assign`` on each.

Layout written under ``OUT``::

    OUT/masters/exNN_*.ipynb            the generated otter masters (solutions + all tests: keep private)
    OUT/student/exNN_*.ipynb            what students get: stubs, public tests only, no solution code
    OUT/autograder/exNN_*/              otter's autograder folder: solutions notebook, the autograder zip
    OUT/autograder/course.json          what ``refreekv-edu grade`` needs: questions, points, the hidden seed

``otter assign`` runs in a subprocess (``python -m otter assign``), so otter is imported only there.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .masters import GROUP_POINTS, PUBLIC_GROUPS, PUBLIC_SEED, build_master, find_notebooks, read_exercise_notebook

MANIFEST = "course.json"


def require_otter() -> None:
    """Raise a one-line RuntimeError when otter-grader is not installed."""
    import importlib.util

    if importlib.util.find_spec("otter") is None:
        raise RuntimeError("otter-grader is not installed: pip install 'refreekv_edu[course]'")


def check_writable(out: Path) -> Path:
    """``out`` as an absolute path, created if needed; a clear error when it cannot hold the assignment."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"{out} is not writable: {exc.strerror or exc}") from None
    for sub in ("student", "autograder", "masters"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise ValueError(f"{out / sub} exists and is not a folder")
    return out


def run_otter_assign(master: Path, result: Path, timeout_s: float = 600.0) -> None:
    """``otter assign master result`` in a subprocess; a RuntimeError with otter's output when it fails."""
    cmd = [sys.executable, "-m", "otter", "assign", "--no-pdfs", str(master), str(result)]
    env = {**os.environ, "REFREEKV_SOLUTIONS": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=master.parent)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"otter assign {master.name} did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise RuntimeError(f"otter assign {master.name} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def assign(
    out: Path, exercises: list[str] | None = None, hidden_seed: int | None = None, run_tests: bool = True
) -> dict[str, Any]:
    """Build the masters and run ``otter assign`` for each exercise notebook; return the manifest.

    Args:
        out: the output folder (created; ``student/``, ``autograder/`` and ``masters/`` inside are replaced).
        exercises: notebook prefixes such as ``["ex01", "ex02"]`` (all when None).
        hidden_seed: seed of the hidden cases (a random one when None; it is written to the manifest).
        run_tests: let ``otter assign`` grade the solutions notebook (proves every test passes on the solutions).
    """
    require_otter()
    out = check_writable(out)
    notebooks = [read_exercise_notebook(p) for p in find_notebooks(exercises)]
    if hidden_seed is None:
        hidden_seed = secrets.randbelow(2**31 - 1) + 1
    if isinstance(hidden_seed, bool) or not isinstance(hidden_seed, int) or hidden_seed < 0:
        raise ValueError(f"--hidden-seed must be a non-negative integer, got {hidden_seed!r}")

    for sub in ("student", "autograder", "masters"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    manifest: dict[str, Any] = {
        "hidden_seed": hidden_seed,
        "public_seed": PUBLIC_SEED,
        "public_groups": list(PUBLIC_GROUPS),
        "group_points": dict(GROUP_POINTS),
        "assignments": {},
    }
    with tempfile.TemporaryDirectory(prefix="refreekv-assign-", dir=out) as tmp:
        for nb in notebooks:
            master = out / "masters" / nb.path.name
            master.write_text(json.dumps(build_master(nb, hidden_seed, run_tests), indent=1) + "\n", encoding="utf-8")
            result = Path(tmp) / nb.stem
            run_otter_assign(master, result)
            shutil.copy2(result / "student" / nb.path.name, out / "student" / nb.path.name)
            shutil.copytree(result / "autograder", out / "autograder" / nb.stem)
            zips = sorted((out / "autograder" / nb.stem).glob("*.zip"))
            if len(zips) != 1:
                raise RuntimeError(f"otter assign wrote {len(zips)} autograder zips for {nb.stem}, expected 1")
            manifest["assignments"][nb.stem] = {
                "zip": f"{nb.stem}/{zips[0].name}",
                "questions": [q.name for q in nb.questions],
                "points": {q.name: sum(GROUP_POINTS.values()) for q in nb.questions},
            }
    (out / "autograder" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
