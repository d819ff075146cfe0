"""The docs site shows the notebooks with their outputs, without running them during the docs build.

The notebook tests save each notebook they execute under ``$REFREEKV_EXECUTED_NOTEBOOKS``
(``tests/notebooks/test_execute_notebooks.py``); ``docs/_hooks/notebooks.py`` renders those executed copies.
These tests build a tiny site (the real hook and mkdocs-jupyter, one small notebook) and check that

- an executed copy is rendered: the page holds its text output and its PNG plot as an ``<img>``, while the
  page's download stays the stored, output-free notebook;
- a fresh checkout (no executed copies) and a stale copy (the notebook was edited since) fall back to the stored
  notebook, say so at INFO level, and still pass ``--strict``;
- what the notebook tests write is what the hook reads (the folder layout), with widgets turned into a note.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="needs the 'docs' extra: pip install 'refreekv_edu[docs]'")
pytest.importorskip("mkdocs_jupyter", reason="needs the 'docs' extra: pip install 'refreekv_edu[docs]'")
nbformat = pytest.importorskip("nbformat", reason="needs the 'notebooks' extra: pip install 'refreekv_edu[notebooks]'")

from mkdocs.commands.build import build  # noqa: E402
from mkdocs.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "_hooks" / "notebooks.py"
NOTEBOOK_TESTS = ROOT / "tests" / "notebooks" / "test_execute_notebooks.py"
ENV = "REFREEKV_EXECUTED_NOTEBOOKS"
OUTPUT_TEXT = "hello from the kernel: 42 KiB per token"
NAME = "01_tiny.ipynb"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png() -> bytes:
    """A valid 2x2 RGB PNG (red, green / blue, white)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\x00\xff\x00\x00\x00\xff\x00" + b"\x00\x00\x00\xff\xff\xff\xff"
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG_B64 = base64.b64encode(_png()).decode()


def _notebook(executed: bool, code: str = "print(kib)"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell("kib = '42 KiB per token'")
    second = nbformat.v4.new_code_cell(code)
    plot = nbformat.v4.new_code_cell("plt.show()")
    if executed:
        for n, cell in enumerate((first, second, plot), start=1):
            cell.execution_count = n
        second.outputs = [nbformat.v4.new_output("stream", name="stdout", text=OUTPUT_TEXT + "\n")]
        plot.outputs = [
            nbformat.v4.new_output(
                "display_data", data={"image/png": PNG_B64, "text/plain": "<Figure size 700x360 with 1 Axes>"}
            )
        ]
    nb.cells = [nbformat.v4.new_markdown_cell("# A tiny notebook\n\n## Learning goals\n\n- one"), first, second, plot]
    return nb


def _site(tmp_path: Path, *, copy: bool = True, edit_stored: bool = False) -> tuple[Path, Path]:
    """A repository with one stored notebook (and its executed copy): (the mkdocs.yml, the executed folder)."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "index.md").write_text("# Home\n", encoding="utf-8")
    (repo / "notebooks").mkdir()
    stored = _notebook(executed=False, code="print(kib)  # edited" if edit_stored else "print(kib)")
    nbformat.write(stored, repo / "notebooks" / NAME)
    executed_dir = tmp_path / "executed"
    if copy:
        (executed_dir / "notebooks").mkdir(parents=True)
        nbformat.write(_notebook(executed=True), executed_dir / "notebooks" / NAME)
    config = repo / "mkdocs.yml"
    config.write_text(
        "\n".join(
            [
                "site_name: tiny",
                "docs_dir: docs",
                "strict: true",
                "theme: {name: mkdocs}",
                f"hooks: [{json.dumps(str(HOOK))}]",
                "plugins:",
                "  - mkdocs-jupyter:",
                '      include: ["*.ipynb"]',
                "      execute: false",
                "      include_source: true",
                "      cache: false",
                "nav:",
                "  - Home: index.md",
                "  - Notebooks: []",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config, executed_dir


def _build(config: Path, site: Path) -> str:
    """Build the site with ``--strict``; the notebook's rendered page."""
    cfg = load_config(str(config), site_dir=str(site), strict=True)
    build(cfg)
    return (site / "notebooks" / Path(NAME).stem / "index.html").read_text(encoding="utf-8")


def _download_outputs(site: Path) -> int:
    nb = nbformat.read(site / "notebooks" / Path(NAME).stem / NAME, as_version=4)
    return sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


def test_the_page_shows_the_executed_copy_with_its_text_and_png(tmp_path, monkeypatch, caplog) -> None:
    config, executed_dir = _site(tmp_path)
    monkeypatch.setenv(ENV, str(executed_dir))
    with caplog.at_level(logging.INFO, logger="mkdocs"):
        html = _build(config, tmp_path / "site")
    assert OUTPUT_TEXT in html, "the page must show the executed copy's text output"
    assert f'src="data:image/png;base64,{PNG_B64}"' in html and "<img" in html, "the page must show the PNG plot"
    assert "print(kib)" in html  # the code is still there
    assert "1 notebooks are rendered with outputs" in caplog.text
    assert _download_outputs(tmp_path / "site") == 0, "the page's download must stay the stored notebook"


def test_a_fresh_checkout_renders_the_stored_notebook_and_says_so(tmp_path, monkeypatch, caplog) -> None:
    config, _ = _site(tmp_path, copy=False)
    monkeypatch.delenv(ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="mkdocs"):
        html = _build(config, tmp_path / "site")  # --strict: INFO only, no warning
    assert "print(kib)" in html and OUTPUT_TEXT not in html and PNG_B64 not in html and "<img" not in html
    assert f"rendered without outputs: {ENV} is not set" in caplog.text


def test_a_missing_or_stale_copy_falls_back_to_the_stored_notebook(tmp_path, monkeypatch, caplog) -> None:
    config, executed_dir = _site(tmp_path, edit_stored=True)  # the notebook was edited after the tests ran
    monkeypatch.setenv(ENV, str(executed_dir))
    with caplog.at_level(logging.INFO, logger="mkdocs"):
        html = _build(config, tmp_path / "site")
    assert "# edited" in html and OUTPUT_TEXT not in html
    assert "is stale" in caplog.text

    caplog.clear()
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with caplog.at_level(logging.INFO, logger="mkdocs"):
        html = _build(config, tmp_path / "site2")
    assert OUTPUT_TEXT not in html and "no executed copy at" in caplog.text


def test_what_the_notebook_tests_write_is_what_the_hook_renders(tmp_path, monkeypatch) -> None:
    writer = _load(NOTEBOOK_TESTS, "_refreekv_notebook_tests")  # skips without the 'notebooks' extra
    hook = _load(HOOK, "_refreekv_docs_hook")
    stored = ROOT / "notebooks" / "01_kv_cache_memory.ipynb"
    executed = nbformat.read(stored, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    code[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=OUTPUT_TEXT)]
    code[1].outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "VBox(children=())"},
        )
    ]
    executed.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}

    monkeypatch.delenv(ENV, raising=False)
    writer._save_executed(stored, executed, {"REFREEKV_FAST": "1"})
    assert not (tmp_path / "executed").exists()  # unset: nothing is written

    monkeypatch.setenv(ENV, str(tmp_path / "executed"))
    writer._save_executed(stored, executed, {"REFREEKV_FAST": "1"})
    copy, why = hook.executed_copy(stored, str(tmp_path / "executed"), ROOT)
    assert copy == (tmp_path / "executed" / "notebooks" / stored.name).resolve(), why
    saved = nbformat.read(copy, as_version=4)
    assert "widgets" not in saved.metadata
    saved_code = [c for c in saved.cells if c.cell_type == "code"]
    assert saved_code[0].outputs[0]["text"] == OUTPUT_TEXT
    assert "interactive widget" in saved_code[1].outputs[0]["data"]["text/plain"]
    assert "VBox" not in json.dumps(saved_code[1].outputs)
    # the stored notebook is untouched
    assert not any(c.get("outputs") for c in nbformat.read(stored, as_version=4).cells if c.cell_type == "code")
