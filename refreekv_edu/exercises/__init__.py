"""Graded exercises for courses: implement a piece of ReFreeKV, then check it.

Each exercise is one function of the algorithm (the paper's method, ``rk.ReFreeKV()``, and the official
script's pieces). ``check_<name>(your_function)`` runs it on small, random and adversarial cases, compares
with the instructor solution and explains the first wrong case (inputs, expected, got, and a hint that often
names the exact mistake)::

    from refreekv_edu.exercises import check_halting_curve

    def halting_curve(last_attn, order):
        ...

    check_halting_curve(halting_curve)      # displays PASSED ... or FAILED ... with the first failing case

Submissions run under a time limit and cannot crash the grader (see :mod:`refreekv_edu.exercises.grading`).

Instructor solutions live in :mod:`refreekv_edu.exercises.solutions`; this package does not put them in its
namespace (instructors import the module explicitly). The notebooks in ``notebooks/exercises/`` wrap each
exercise with its text, a stub and a check cell; ``REFREEKV_SOLUTIONS=1`` makes each check grade the instructor
solution instead (``instructor=True``; used by CI to prove the notebooks run).
"""

from __future__ import annotations

from .checks import (
    EXERCISES,
    check,
    check_candidate_curve,
    check_decide_layer,
    check_expand_kv,
    check_full_layers,
    check_gqa_grouping,
    check_group_scores,
    check_halting_curve,
    check_halting_cut,
    check_kept_positions,
    check_model_budget,
    check_official_script_layer,
    check_rank_candidates,
    check_recency_keep,
    check_sink_exclusion,
    check_snapkv_pool,
    check_window_protection,
    check_window_scores,
)
from .results import GROUPS, CaseResult, CheckResult, Failure
from .sandbox import TIME_LIMIT_S

# The graders import the instructor solutions; importing a submodule also binds it on this package, so unbind
# it: a student's `ex.` (tab completion, `dir(ex)`) must not offer `ex.solutions` next to their stub.
globals().pop("solutions", None)

__all__ = [
    "EXERCISES",
    "GROUPS",
    "TIME_LIMIT_S",
    "CaseResult",
    "CheckResult",
    "Failure",
    "check",
    "check_candidate_curve",
    "check_decide_layer",
    "check_expand_kv",
    "check_full_layers",
    "check_gqa_grouping",
    "check_group_scores",
    "check_halting_curve",
    "check_halting_cut",
    "check_kept_positions",
    "check_model_budget",
    "check_official_script_layer",
    "check_rank_candidates",
    "check_recency_keep",
    "check_sink_exclusion",
    "check_snapkv_pool",
    "check_window_protection",
    "check_window_scores",
]
