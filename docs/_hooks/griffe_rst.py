"""Griffe extension (used by mkdocstrings): render the bits of reStructuredText the docstrings use.

The package's docstrings are read in notebooks and ``help()`` as much as on this site, and some use
three reStructuredText habits that Markdown would show literally. Before a docstring is parsed, this
extension rewrites them:

- Sphinx roles, ``:class:`~refreekv_edu.backend.Backend``` -> ```Backend``` (a code span; like Sphinx,
  ``~`` shortens a dotted path to its last component). Left alone, a role at the start of a ``Returns:``
  item would even be mistaken for a ``name: description`` pair.
- A paragraph ending in ``::`` (it introduces an indented literal block) ends in ``:`` instead; the
  indented block itself is already a Markdown code block.
- "Simple tables" (columns under ``=====  =====`` rules) become Markdown tables.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLES = r"(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const)"
ROLE = re.compile(rf":{ROLES}:`(?P<target>[^`]+)`")
RULE = re.compile(r"^(?P<indent>\s*)=+(?:\s+=+)+\s*$")


def _display(target: str) -> str:
    """Sphinx's display rule: ``~a.b.C`` shows ``C``; anything else shows as written."""
    return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target


def strip_roles(text: str) -> str:
    """Replace every ``:role:`target``` in ``text`` with ```display``` (a Markdown code span)."""
    return ROLE.sub(lambda m: f"`{_display(m.group('target'))}`", text)


def literal_markers(text: str) -> str:
    """``Usage::`` -> ``Usage:``; a line holding only ``::`` disappears (the block after it stays indented)."""
    lines = []
    for line in text.split("\n"):
        if line.strip() == "::":
            lines.append("")
        elif line.rstrip().endswith("::"):
            lines.append(line.rstrip()[:-1])
        else:
            lines.append(line)
    return "\n".join(lines)


def _columns(rule: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each ``=`` run of a table rule."""
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, columns: list[tuple[int, int]]) -> list[str]:
    # The last column runs to the end of the line, as in reStructuredText.
    bounds = [(start, columns[i + 1][0] if i + 1 < len(columns) else len(line)) for i, (start, _) in enumerate(columns)]
    return [line[a:b].strip() for a, b in bounds]


def simple_tables(text: str) -> str:
    """Convert reStructuredText simple tables (header between two ``===`` rules, closed by a third) to Markdown.

    A row whose first cell is empty continues the row above it (its cells are appended with a space).
    Anything that does not look like a complete table is left as it is.
    """
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        rules = [j for j in range(i, len(lines)) if RULE.match(lines[j])][:3] if RULE.match(lines[i]) else []
        if len(rules) == 3 and rules[0] == i and rules[1] == i + 2:
            columns = _columns(lines[i])
            header = _cells(lines[i + 1], columns)
            rows: list[list[str]] = []
            for line in lines[rules[1] + 1 : rules[2]]:
                if not line.strip():
                    continue
                cells = _cells(line, columns)
                if rows and not cells[0]:
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
                else:
                    rows.append(cells)
            indent = RULE.match(lines[i]).group("indent")
            out.append(indent + "| " + " | ".join(header) + " |")
            out.append(indent + "|" + "---|" * len(header))
            out.extend(indent + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
            i = rules[2] + 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """All three rewrites, tables first (their rules must not be mistaken for anything else)."""
    return strip_roles(literal_markers(simple_tables(text)))


class RstCompat(Extension):
    """Rewrite every docstring once the object tree is loaded (docstrings are parsed later, on render)."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
