"""Graded exercises for courses: implement a piece of ReFreeKV, then check it.

Each exercise is one function of the algorithm. ``check_<name>(your_function)`` runs it on small, random and
adversarial cases, compares with the instructor solution and explains the first wrong case (inputs, expected,
got, and a hint that often names the exact mistake)::

    from refreekv_edu.exercises import check_halting_curve

    def halting_curve(last_attn, order):
        ...

    check_halting_curve(halting_curve)      # displays PASSED ... or FAILED ... with the first failing case

Instructor solutions: :mod:`refreekv_edu.exercises.solutions`. The notebooks in ``notebooks/exercises/`` wrap
each exercise with its text, a stub and a check cell; ``REFREEKV_SOLUTIONS=1`` fills the stubs with the solutions
(used by CI to prove the notebooks run).
"""

from __future__ import annotations

from . import solutions
from .checks import (
    EXERCISES,
    check,
    check_decide_layer,
    check_expand_kv,
    check_gqa_grouping,
    check_group_scores,
    check_halting_curve,
    check_halting_cut,
    check_kept_positions,
    check_rank_candidates,
    check_snapkv_pool,
    check_window_protection,
    check_window_scores,
)
from .grading import CheckResult, Failure

__all__ = [
    "EXERCISES",
    "CheckResult",
    "Failure",
    "check",
    "check_decide_layer",
    "check_expand_kv",
    "check_gqa_grouping",
    "check_group_scores",
    "check_halting_curve",
    "check_halting_cut",
    "check_kept_positions",
    "check_rank_candidates",
    "check_snapkv_pool",
    "check_window_protection",
    "check_window_scores",
    "solutions",
]
