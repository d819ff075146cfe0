"""What a checker returns: every case's verdict, grouped, and the first wrong case explained.

A :class:`CheckResult` is truthy when every case passed. Its text (``str``, ``repr``, the notebook's HTML) names
the first failing case with its inputs, the expected and the actual output and a hint, then lists the other
failing cases one line each. Cases come in groups (:data:`GROUPS`): ``basic`` (small, readable and typical
inputs), ``edge`` (the boundaries: one candidate, no sinks, ``w = 1``, ``e* = 0``...) and ``adversarial``
(inputs built so that a typical mistake shows: ties, a threshold hit exactly, huge logits, a negative tail).
Courses give points per group (:meth:`CheckResult.by_group`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

#: The case groups, in the order they are checked and reported.
GROUPS: tuple[str, ...] = ("basic", "edge", "adversarial")


@dataclass
class Failure:
    """The first case a submission got wrong, explained."""

    case: str
    about: str
    inputs: str
    expected: str
    got: str
    problem: str
    hint: str
    diagnosis: str | None = None  # name of the known mistake that matched, if any
    group: str = "basic"


@dataclass
class CaseResult:
    """The verdict on one case: ``problem`` says what was wrong (empty when it passed)."""

    name: str
    group: str
    passed: bool
    problem: str = ""


@dataclass
class CheckResult:
    """The outcome of a checker. Truthy when every case passed; its text explains the first failure.

    Attributes:
        exercise: the function graded.
        passed: True when every case passed.
        n_passed: how many cases passed (every case is run, so later cases count after a failure).
        n_cases: cases checked.
        failure: the first failing case explained (``None`` when passed).
        cases: names of the cases, in the order they were checked.
        note: e.g. ``"the instructor solution was graded, not yours"``.
        case_results: one verdict per case, in the order of ``cases``.
    """

    exercise: str
    passed: bool
    n_passed: int
    n_cases: int
    failure: Failure | None = None
    cases: list[str] = field(default_factory=list)
    note: str = ""
    case_results: list[CaseResult] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def by_group(self) -> dict[str, tuple[int, int]]:
        """``{group: (cases passed, cases)}`` for the groups checked, in :data:`GROUPS` order."""
        counts: dict[str, tuple[int, int]] = {}
        for group in (*GROUPS, *sorted({r.group for r in self.case_results} - set(GROUPS))):
            mine = [r for r in self.case_results if r.group == group]
            if mine:
                counts[group] = (sum(r.passed for r in mine), len(mine))
        return counts

    def group_passed(self, group: str) -> bool:
        """True when ``group`` was checked and every one of its cases passed."""
        passed, total = self.by_group().get(group, (0, 0))
        return total > 0 and passed == total

    def _groups_text(self) -> str:
        return ", ".join(f"{g} {p}/{n}" for g, (p, n) in self.by_group().items())

    @property
    def message(self) -> str:
        """The full explanation, as printed."""
        if self.passed:
            note = f" ({self.note})" if self.note else ""
            groups = f"; {self._groups_text()}" if self.case_results else ""
            return f"PASSED {self.exercise}{note}: all {self.n_cases} cases correct ({', '.join(self.cases)}{groups})."
        f = self.failure
        assert f is not None
        groups = f" ({self._groups_text()})" if self.case_results else ""
        lines = [
            f"FAILED {self.exercise}: {self.n_passed} of {self.n_cases} cases passed{groups}; "
            f"the first wrong one is {f.case!r} ({f.group}).",
            f"  case:     {f.about}",
            f"  inputs:   {_indent(f.inputs)}",
            f"  expected: {_indent(f.expected)}",
            f"  got:      {_indent(f.got)}",
            f"  problem:  {_indent(f.problem)}",
            f"  hint:     {_indent(f.hint)}",
        ]
        others = [r for r in self.case_results if not r.passed and r.name != f.case]
        if others:
            lines.append("  also wrong:")
            lines += [f"    {r.name!r} ({r.group}): {_first_line(r.problem)}" for r in others]
        return "\n".join(lines)

    def raise_if_failed(self) -> CheckResult:
        """Raise an AssertionError carrying the explanation when the submission failed (for CI); else return self."""
        if not self.passed:
            raise AssertionError(self.message)
        return self

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        return f'<pre style="border-left: 4px solid {colour}; padding-left: 8px">{html.escape(self.message)}</pre>'


def _indent(text: str) -> str:
    return text.replace("\n", "\n            ")


def _first_line(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
