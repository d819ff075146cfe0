"""The checkers: ``check_<exercise>(your_function)`` grades a submission and explains the first wrong case.

Every checker calls your function positionally with numpy float32 / int64 arrays, compares the answer with
the instructor solution (:mod:`refreekv_edu.exercises.solutions`) and returns a
:class:`~refreekv_edu.exercises.grading.CheckResult`: truthy when all cases pass; otherwise its text names the
first failing case, its inputs, the expected and the actual output, and a hint (often naming the exact mistake).

Example:
    >>> from refreekv_edu.exercises import check_halting_cut, solutions
    >>> bool(check_halting_cut(solutions.halting_cut))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import cases, mistakes, solutions
from .grading import CheckResult, Exercise, grade

EXERCISES: dict[str, Exercise] = {
    ex.name: ex
    for ex in [
        Exercise(
            "window_scores",
            "window_scores(queries, keys, scale, window) -> (col_sum, last_row)",
            solutions.window_scores,
            cases.window_scores_cases,
            mistakes.WINDOW_SCORES,
        ),
        Exercise(
            "snapkv_pool",
            "snapkv_pool(scores, kernel) -> pooled",
            solutions.snapkv_pool,
            cases.snapkv_pool_cases,
            mistakes.SNAPKV_POOL,
        ),
        Exercise(
            "expand_kv",
            "expand_kv(keys, group_size) -> keys_per_query_head",
            solutions.expand_kv,
            cases.expand_kv_cases,
            mistakes.EXPAND_KV,
        ),
        Exercise(
            "group_scores",
            "group_scores(scores, group_size) -> scores_per_kv_head",
            solutions.group_scores,
            cases.group_scores_cases,
            mistakes.GROUP_SCORES,
        ),
        Exercise(
            "rank_candidates",
            "rank_candidates(scores) -> order",
            solutions.rank_candidates,
            cases.rank_candidates_cases,
            mistakes.RANK_CANDIDATES,
        ),
        Exercise(
            "halting_curve",
            "halting_curve(last_attn, order) -> ratio",
            solutions.halting_curve,
            cases.halting_curve_cases,
            mistakes.HALTING_CURVE,
        ),
        Exercise(
            "halting_cut",
            "halting_cut(last_attn, order, threshold) -> n_evicted",
            solutions.halting_cut,
            cases.halting_cut_cases,
            mistakes.HALTING_CUT,
        ),
        Exercise(
            "kept_positions",
            "kept_positions(order, n_evicted, prompt_len, window) -> kept",
            solutions.kept_positions,
            cases.kept_positions_cases,
            mistakes.KEPT_POSITIONS,
        ),
        Exercise(
            "decide_layer",
            "decide_layer(queries, keys, threshold, window) -> kept",
            solutions.decide_layer,
            cases.decide_layer_cases,
            mistakes.DECIDE_LAYER,
        ),
    ]
}


def check(name: str, fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``fn`` as the exercise ``name`` (one of :data:`EXERCISES`)."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; exercises: {', '.join(EXERCISES)}")
    return grade(EXERCISES[name], fn, seed=seed)


def check_window_scores(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``window_scores(queries (Hq, w, D), keys (Hq, L, D), scale, window) -> (col_sum (Hq, n), last_row (Hq, n))``.

    Steps 2 and 4: softmax of ``scale * Q K^T`` with the causal mask inside the window; ``col_sum`` sums the ``w``
    rows over the ``n = L - w`` candidate columns, ``last_row`` is the last row on those columns.
    """
    return check("window_scores", fn, seed)


def check_snapkv_pool(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``snapkv_pool(scores (H, n), kernel) -> (H, n)``: max-pool, stride 1, same size, windows clipped at the edges."""
    return check("snapkv_pool", fn, seed)


def check_expand_kv(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``expand_kv(keys (Hkv, L, D), group_size) -> (Hkv * G, L, D)``: query head ``h`` reads KV head ``h // G``."""
    return check("expand_kv", fn, seed)


def check_group_scores(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``group_scores(scores (Hq, n), group_size) -> (Hkv, n)``: the sum over each KV head's ``G`` consecutive query heads."""
    return check("group_scores", fn, seed)


def check_gqa_grouping(
    expand_kv: Callable[..., Any], group_scores: Callable[..., Any] | None = None, seed: int = 0
) -> CheckResult:
    """Grade both GQA pieces: ``expand_kv`` and (if given) ``group_scores``; returns the first failure, else a pass."""
    first = check_expand_kv(expand_kv, seed)
    if not first or group_scores is None:
        return first
    second = check_group_scores(group_scores, seed)
    if not second:
        return second
    return CheckResult(
        "gqa_grouping",
        True,
        first.n_cases + second.n_cases,
        first.n_cases + second.n_cases,
        None,
        [f"expand_kv:{c}" for c in first.cases] + [f"group_scores:{c}" for c in second.cases],
    )


def check_rank_candidates(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``rank_candidates(scores (H, n)) -> order (H, n)``: least important first, ties evict the older position first."""
    return check("rank_candidates", fn, seed)


def check_halting_curve(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``halting_curve(last_attn (H, n), order (H, n)) -> ratio (n,)``, ``ratio(e) = (R(0) - R(e)) / R(0)``."""
    return check("halting_curve", fn, seed)


def check_halting_cut(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``halting_cut(last_attn (H, n), order (H, n), threshold) -> e*`` (an int in ``[0, n-1]``)."""
    return check("halting_cut", fn, seed)


def check_kept_positions(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade ``kept_positions(order (H, n), n_evicted, prompt_len, window) -> (H, n - e* + w)``, ascending, window included."""
    return check("kept_positions", fn, seed)


#: The window-protection exercise under the name the course uses.
check_window_protection = check_kept_positions


def check_decide_layer(fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Grade the capstone ``decide_layer(queries (Hq, w, D), keys (Hkv, L, D), threshold, window) -> kept (Hkv, n_kept)``."""
    return check("decide_layer", fn, seed)
