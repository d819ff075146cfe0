"""Every notebook runs top to bottom without an error in fast mode, and every stored notebook has no outputs.

Guided notebooks run with ``REFREEKV_FAST=1`` (small prompts and arrays); exercise notebooks also get
``REFREEKV_SOLUTIONS=1``, which fills the student stubs with the instructor solutions so every check passes.
Notebooks that load the bundled 135M model are marked ``slow`` (loading it from its GGUF takes about a minute
on 2 CPU cores); they skip when torch + transformers are not installed or the model cannot be fetched.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the 'notebooks' extra: pip install 'refreekv_edu[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="needs the 'notebooks' extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("ipykernel", reason="needs the 'notebooks' extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("ipywidgets", reason="needs the 'notebooks' extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the notebooks plot with matplotlib")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
GUIDED = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXERCISES = sorted((NOTEBOOKS / "exercises").glob("*.ipynb"))
#: Guided notebooks that load the bundled model (torch backend).
USES_MODEL = {
    "03_fixed_budget_failures.ipynb",
    "05_per_layer_budgets.ipynb",
    "07_evaluate_vs_full_cache.ipynb",
    "08_ablation_sinks_and_ranking.ipynb",
}
#: Seconds allowed per cell (fast mode targets < 60 s per notebook; model loading dominates the slow ones).
CELL_TIMEOUT = 600


def _model_available() -> str | None:
    """``None`` when the bundled model can run with the torch backend here, else why not."""
    for module in ("torch", "transformers", "gguf"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'refreekv_edu[torch]')"
    try:
        from refreekv_edu.models import fetch_model

        fetch_model("smollm2-135m", quiet=True)
    except Exception as exc:  # noqa: BLE001 - offline with no cached copy, etc.
        return f"the bundled model is not available: {exc}"
    return None


def _run(path: Path, env: dict[str, str]) -> tuple[object, float]:
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is a subprocess and inherits this environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        start = time.perf_counter()
        client.execute()
        return nb, time.perf_counter() - start
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _errors(nb) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k == "text/plain")
    return "\n".join(parts)


def test_the_numbered_path_is_complete() -> None:
    numbers = [p.name[:2] for p in GUIDED]
    assert numbers == [f"{i:02d}" for i in range(1, 9)], (
        f"guided notebooks 01..08 expected, found {[p.name for p in GUIDED]}"
    )
    assert len(EXERCISES) >= 3


@pytest.mark.parametrize("path", GUIDED + EXERCISES, ids=lambda p: p.name)
def test_stored_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs; strip them (jupyter nbconvert --clear-output --inplace)"
    )


@pytest.mark.parametrize("path", GUIDED + EXERCISES, ids=lambda p: p.name)
def test_notebook_states_goals_and_ends_with_recap(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    first_md = next(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Learning goals" in first_md, f"{path.name}: the first markdown cell must state the learning goals"
    tail = "\n".join(c.source for c in nb.cells[-3:] if c.cell_type == "markdown")
    assert "Recap" in tail or "recap" in tail, f"{path.name}: end with a recap"
    setup = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "REFREEKV_FAST" in setup, f"{path.name}: the first code cell must read REFREEKV_FAST"


def _guided_params():
    for path in GUIDED:
        marks = [pytest.mark.slow] if path.name in USES_MODEL else []
        yield pytest.param(path, marks=marks, id=path.name)


@pytest.mark.parametrize("path", list(_guided_params()))
def test_guided_notebook_runs_in_fast_mode(path: Path) -> None:
    if path.name in USES_MODEL and (why := _model_available()):
        pytest.skip(why)
    if path.name.startswith("06") and importlib.util.find_spec("torch") is None:
        pytest.skip("notebook 06 compares the torch backend with the reference: torch is not installed")
    nb, seconds = _run(path, {"REFREEKV_FAST": "1"})
    assert not _errors(nb), f"{path.name}: {_errors(nb)}"
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_notebook_passes_with_solutions(path: Path) -> None:
    nb, seconds = _run(path, {"REFREEKV_FAST": "1", "REFREEKV_SOLUTIONS": "1"})
    assert not _errors(nb), f"{path.name}: {_errors(nb)}"
    text = _text(nb)
    assert "PASSED" in text and "FAILED" not in text, f"{path.name}: some check did not pass:\n{text[-2000:]}"


def test_exercise_notebook_without_solutions_explains_the_stub() -> None:
    path = EXERCISES[0]
    nb, _ = _run(path, {"REFREEKV_FAST": "1", "REFREEKV_SOLUTIONS": "0"})
    assert not _errors(nb), f"{path.name}: a student's first run must not crash: {_errors(nb)}"
    text = _text(nb)
    assert "FAILED" in text and "NotImplementedError" in text and "hint:" in text
