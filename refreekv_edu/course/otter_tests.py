"""What the otter test cases of the generated assignments call: one group of a package check, as an assertion.

Each test case of a question (``refreekv_edu.course.masters.test_cell``) is::

    def test_hidden_edge(halting_curve):
        from refreekv_edu.course.otter_tests import assert_group
        assert_group("halting_curve", halting_curve, "edge", seed=1234)

so otter's feedback carries the package's diagnostic message (the first wrong case, expected, got, and the hint
that names the mistake). These run in the student's kernel: they are feedback, and otter's score is checked
against the trusted re-grade (:mod:`refreekv_edu.course.batch`), whose points are the ones that count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def assert_group(name: str, fn: Callable[..., Any] | None, group: str, seed: int = 0) -> None:
    """Raise ``AssertionError(message)`` unless ``fn`` passes every case of ``group`` of exercise ``name``."""
    if not callable(fn):
        raise AssertionError(f"{name} is not defined as a function: run its cell (got {type(fn).__name__})")
    from ..exercises import check

    result = check(name, fn, seed=seed, groups=[group])
    if not result:
        raise AssertionError(str(result.message))
