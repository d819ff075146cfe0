"""Execute every ```python code block of the documentation, so the docs cannot drift from the code.

Rules (also stated in docs/guides/verification.md):

- Every fenced block whose info string starts with ``python`` in ``docs/**/*.md`` is executed.
- The blocks of one page run top to bottom in one shared namespace, like the cells of a notebook;
  a page is one test case, and a failure names the page and the line of the failing block.
- A block may opt out only with an explicit marker on the line right above its fence:
  ``<!-- skip-snippet: reason -->`` (never executed here, e.g. Mac/GPU-only code) or
  ``<!-- slow-snippet: reason -->`` (executed only when the slow tests run, e.g. the bundled model), or
  ``<!-- requires-snippet: mlx, torch -->`` (executed when those modules import; left out otherwise, so a
  CI job without the optional extras still checks everything else).
  A marker without a reason (or module list) is an error.
- Snippets check themselves with ``assert``; "it ran" is not the test, their asserts are.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|slow|requires)-snippet\s*:?(?P<reason>.*?)-->\s*$")


@dataclass
class Snippet:
    """One fenced python block: where it is, its source, and whether it opted out."""

    page: Path
    line: int  # 1-based line of the opening fence
    source: str
    skip: str | None = None  # reason, when marked skip-snippet
    slow: str | None = None  # reason, when marked slow-snippet
    requires: str | None = None  # comma-separated module names, when marked requires-snippet

    def missing_modules(self) -> list[str]:
        """The modules of a requires-snippet marker that do not import here."""
        names = [m.strip() for m in (self.requires or "").split(",") if m.strip()]
        return [m for m in names if importlib.util.find_spec(m) is None]


def extract_snippets(page: Path) -> list[Snippet]:
    """All ```python blocks of a Markdown page, in order, with their opt-out markers.

    Raises:
        ValueError: an unclosed fence, or an opt-out marker without a reason / not followed by a python block.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    i = 0
    pending: tuple[str, str, int] | None = None  # (kind, reason, line) of a marker waiting for its block
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker:
            reason = marker.group("reason").strip()
            if not reason:
                raise ValueError(
                    f"{page}:{i + 1}: {marker.group('kind')}-snippet marker needs a reason after the colon"
                )
            pending = (marker.group("kind"), reason, i + 1)
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if not fence:
            if pending and lines[i].strip():
                raise ValueError(
                    f"{page}:{pending[2]}: a snippet marker must be directly followed by a ```python block"
                )
            i += 1
            continue
        indent, mark, info = fence.group("indent"), fence.group("fence"), fence.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: code fence is never closed")
        i += 1
        language = info.split()[0].lower().lstrip("{").lstrip(".") if info else ""
        if language in {"python", "py"}:
            snippet = Snippet(page, start + 1, "\n".join(body) + "\n")
            if pending:
                setattr(snippet, pending[0], pending[1])
            snippets.append(snippet)
        elif pending:
            raise ValueError(f"{page}:{pending[2]}: a snippet marker must be directly followed by a ```python block")
        pending = None
    if pending:
        raise ValueError(f"{page}:{pending[2]}: a snippet marker must be directly followed by a ```python block")
    return snippets


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def _mentions(page: Path, pattern: str) -> bool:
    return re.search(pattern, page.read_text(encoding="utf-8"), flags=re.MULTILINE) is not None


# Chosen by a plain text search, so that a malformed page fails its own test instead of the whole collection.
PAGES_WITH_SNIPPETS = [p for p in doc_pages() if _mentions(p, r"^[ \t]*(`{3,}|~{3,})[ \t]*\{?\.?(python|py)\b")]


def run_snippets(page: Path, root: Path, include_slow: bool) -> int:
    """Execute a page's python blocks in order in one namespace; return how many ran.

    Raises:
        AssertionError: naming ``page:line`` of the first block that raised, and what it raised.
    """
    namespace: dict = {"__name__": f"docs_snippet_{page.stem}"}
    ran = 0
    for snippet in extract_snippets(page):
        if snippet.skip or (snippet.slow and not include_slow) or snippet.missing_modules():
            continue
        where = f"{page.relative_to(root).as_posix()}:{snippet.line}"
        try:
            exec(compile(snippet.source, where, "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - re-raised with the block's location
            raise AssertionError(f"the python block at {where} failed: {type(exc).__name__}: {exc}") from exc
        ran += 1
    return ran


def _run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include_slow: bool) -> None:
    # cwd = a temp dir, so files a snippet writes land there; no GUI backend for matplotlib.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if run_snippets(page, DOCS.parent, include_slow) == 0:
        pytest.skip("every python block on this page is marked skip-snippet (or slow-snippet, run with -m slow)")


#: Pages written by others whose snippets are known to fail, with what is wrong. Strict xfails: once the page is
#: fixed the test fails until its entry is removed here, so the list cannot go stale.
KNOWN_BROKEN_PAGES: dict[str, str] = {}


def _page_params(pages: list[Path]) -> list:
    params = []
    for page in pages:
        name = page.relative_to(DOCS).as_posix()
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN_PAGES[name])] if name in KNOWN_BROKEN_PAGES else []
        params.append(pytest.param(page, marks=marks, id=name))
    return params


@pytest.mark.parametrize("page", _page_params(PAGES_WITH_SNIPPETS))
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the page's python blocks top to bottom, leaving out those marked skip-snippet / slow-snippet."""
    _run_page(page, tmp_path, monkeypatch, include_slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", _page_params([p for p in PAGES_WITH_SNIPPETS if _mentions(p, r"<!--\s*slow-snippet")]))
def test_page_snippets_run_with_slow(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, including blocks marked slow-snippet (they load the bundled model: minutes on a CPU)."""
    _run_page(page, tmp_path, monkeypatch, include_slow=True)


def shell_lines(page: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line inside ```bash / ```sh / ```console / ```shell blocks of a page."""
    found, inside, lines = [], False, page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if fence and not inside:
            inside = fence.group("info").strip().split(" ")[0].lower() in {"bash", "sh", "console", "shell"}
            continue
        if fence and inside:
            inside = False
            continue
        if inside:
            found.append((number, line.split("#", 1)[0].strip().removeprefix("$ ")))
    return found


def test_cli_commands_in_docs_exist() -> None:
    """Every ``refreekv-edu <subcommand> --flag`` shown in a shell block is a real subcommand with that flag."""
    import shlex

    from refreekv_edu.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    problems, checked = [], 0
    for page in doc_pages():
        for number, line in shell_lines(page):
            if not line.startswith("refreekv-edu "):
                continue
            words = shlex.split(line)
            where = f"{page.relative_to(DOCS.parent)}:{number}"
            if words[1].startswith("-"):
                continue  # refreekv-edu --help / --version
            if words[1] not in subparsers:
                problems.append(f"{where}: no subcommand {words[1]!r} (have {sorted(subparsers)})")
                continue
            options = {o for action in subparsers[words[1]]._actions for o in action.option_strings}
            problems += [
                f"{where}: refreekv-edu {words[1]} has no option {w}"
                for w in words[2:]
                if w.startswith("--") and w.split("=")[0] not in options
            ]
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 5, f"only {checked} refreekv-edu command lines found in docs/; is the shell-block parser broken?"


REPO_PATH = re.compile(r"`(?P<path>(?:refreekv_edu|backends|tests|bench|notebooks|docs)/[\w./*-]*)`")


def test_repository_paths_in_docs_exist() -> None:
    """Every file or folder of this repository that the docs name in backticks (e.g. `bench/gpu_check.py`) exists."""
    root = DOCS.parent
    missing, checked = [], 0
    for page in doc_pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for match in REPO_PATH.finditer(line):
                path = match.group("path").rstrip("/.")
                checked += 1
                if not (any(root.glob(path)) if "*" in path else (root / path).exists()):
                    missing.append(f"{page.relative_to(root)}:{number}: {path}")
    assert not missing, "the docs name paths that do not exist:\n" + "\n".join(missing)
    assert checked >= 10, f"only {checked} repository paths found in docs/; is the pattern broken?"


def test_docs_have_executed_snippets() -> None:
    """Guard the runner itself: the concept pages hold python blocks, and most blocks are executed."""
    snippets = [s for p in doc_pages() for s in extract_snippets(p)]
    executed = [s for s in snippets if not s.skip and not s.slow]
    assert len(executed) >= 10, f"only {len(executed)} executable python blocks found in docs/; is the parser broken?"
    assert len(executed) >= len(snippets) // 2, "more than half of the python blocks opt out of execution"


def test_parser_finds_blocks_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n\n<!-- skip-snippet: needs a Mac -->\n```python\nimport mlx\n```\n"
        "```bash\necho hi\n```\n!!! note\n    ```python\n    y = x + 1\n    ```\n<!-- slow-snippet: model -->\n```py\nz = 2\n```\n"
    )
    found = extract_snippets(page)
    assert [s.source for s in found] == ["x = 1\n", "import mlx\n", "y = x + 1\n", "z = 2\n"]
    assert [s.skip for s in found] == [None, "needs a Mac", None, None]
    assert [s.slow for s in found] == [None, None, None, "model"]
    assert [s.line for s in found] == [2, 7, 14, 18]


def test_requires_marker_names_modules(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- requires-snippet: numpy, no_such_module_xyz -->\n```python\nraise SystemExit\n```\n")
    (snippet,) = extract_snippets(page)
    assert snippet.requires == "numpy, no_such_module_xyz"
    assert snippet.missing_modules() == ["no_such_module_xyz"]
    assert run_snippets(page, tmp_path, include_slow=True) == 0  # left out, so the SystemExit never runs


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- skip-snippet: -->\n```python\nx = 1\n```\n", "needs a reason"),
        ("<!-- skip-snippet: mac -->\nsome prose\n```python\nx = 1\n```\n", "directly followed"),
        ("<!-- skip-snippet: mac -->\n```bash\nls\n```\n", "directly followed"),
        ("```python\nx = 1\n", "never closed"),
    ],
)
def test_parser_rejects_bad_markup(tmp_path: Path, text: str, message: str) -> None:
    page = tmp_path / "bad.md"
    page.write_text(text)
    with pytest.raises(ValueError, match=message):
        extract_snippets(page)


def test_failing_snippet_is_reported_with_its_location(tmp_path: Path) -> None:
    """A wrong snippet must fail the test, and the message must point at the block."""
    page = tmp_path / "fake.md"
    page.write_text("Intro.\n\n```python\nx = 1\n```\n```python\nassert x + 1 == 3, 'arithmetic drifted'\n```\n")
    with pytest.raises(AssertionError, match=r"fake\.md:6 failed: AssertionError: arithmetic drifted"):
        run_snippets(page, tmp_path, include_slow=False)
