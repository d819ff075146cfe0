"""The checkers: ``check_<exercise>(your_function)`` grades a submission and explains the first wrong case.

Every checker calls your function positionally with numpy float32 / int64 arrays, compares the answer with
the instructor solution and returns a :class:`~refreekv_edu.exercises.results.CheckResult`: truthy when all
cases pass; otherwise its text names the first failing case, its inputs, the expected and the actual output,
and a hint (often naming the exact mistake). Each call of your function may run :data:`TIME_LIMIT_S`
seconds (``time_limit=`` changes it); an endless loop, ``sys.exit()``, a complex or non-numeric answer and a
function that writes into its inputs all fail with a message instead of hanging or crashing the notebook.

The exercises follow the paper's method, ``rk.ReFreeKV()``: the halting curve and cut, the sinks kept but out
of the metric (:func:`check_candidate_curve`), the oldest-first keep step (:func:`check_recency_keep`), the
full layers in the model's budget (:func:`check_model_budget`) and the whole layer decision
(:func:`check_decide_layer`). The official script's pieces (``rk.ReFreeKV.preset("official-script")``: window
attention, H2O/SnapKV ranking, window protection, :func:`check_official_script_layer`) are exercises too.

``instructor=True`` grades the instructor solution instead of the function passed (the result says so):
the exercise notebooks use it with ``REFREEKV_SOLUTIONS=1`` to prove they run, without putting the
solutions in the student's namespace.

Example:
    >>> import numpy as np
    >>> from refreekv_edu.exercises import check_halting_cut
    >>> def halting_cut(last_attn, order, threshold):
    ...     return 0                                    # never evicts anything
    >>> bool(check_halting_cut(halting_cut))
    False
    >>> bool(check_halting_cut(halting_cut, instructor=True))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from . import cases, cases_paper, mistakes, mistakes_paper
from . import solutions as _solutions
from .grading import Exercise, grade
from .results import CheckResult
from .sandbox import TIME_LIMIT_S

EXERCISES: dict[str, Exercise] = {
    ex.name: ex
    for ex in [
        Exercise(
            "window_scores",
            "window_scores(queries, keys, scale, window) -> (col_sum, last_row)",
            _solutions.window_scores,
            cases.window_scores_cases,
            mistakes.WINDOW_SCORES,
        ),
        Exercise(
            "snapkv_pool",
            "snapkv_pool(scores, kernel) -> pooled",
            _solutions.snapkv_pool,
            cases.snapkv_pool_cases,
            mistakes.SNAPKV_POOL,
        ),
        Exercise(
            "expand_kv",
            "expand_kv(keys, group_size) -> keys_per_query_head",
            _solutions.expand_kv,
            cases.expand_kv_cases,
            mistakes.EXPAND_KV,
        ),
        Exercise(
            "group_scores",
            "group_scores(scores, group_size) -> scores_per_kv_head",
            _solutions.group_scores,
            cases.group_scores_cases,
            mistakes.GROUP_SCORES,
        ),
        Exercise(
            "rank_candidates",
            "rank_candidates(scores) -> order",
            _solutions.rank_candidates,
            cases.rank_candidates_cases,
            mistakes.RANK_CANDIDATES,
        ),
        Exercise(
            "halting_curve",
            "halting_curve(last_attn, order) -> ratio",
            _solutions.halting_curve,
            cases.halting_curve_cases,
            mistakes.HALTING_CURVE,
        ),
        Exercise(
            "halting_cut",
            "halting_cut(last_attn, order, threshold) -> n_evicted",
            _solutions.halting_cut,
            cases.halting_cut_cases,
            mistakes.HALTING_CUT,
        ),
        Exercise(
            "candidate_curve",
            "candidate_curve(last_row, sinks) -> ratio",
            _solutions.candidate_curve,
            cases_paper.candidate_curve_cases,
            mistakes_paper.CANDIDATE_CURVE,
        ),
        Exercise(
            "recency_keep",
            "recency_keep(last_row, sinks, threshold) -> kept",
            _solutions.recency_keep,
            cases_paper.recency_keep_cases,
            mistakes_paper.RECENCY_KEEP,
        ),
        Exercise(
            "model_budget",
            "model_budget(last_rows, sinks, threshold, full_layers) -> (budgets, mean_budget)",
            _solutions.model_budget,
            cases_paper.model_budget_cases,
            mistakes_paper.MODEL_BUDGET,
        ),
        Exercise(
            "decide_layer",
            "decide_layer(queries, keys, threshold, sinks, layer) -> kept",
            _solutions.decide_layer,
            cases_paper.decide_layer_cases,
            mistakes_paper.DECIDE_LAYER,
        ),
        Exercise(
            "kept_positions",
            "kept_positions(order, n_evicted, prompt_len, window) -> kept",
            _solutions.kept_positions,
            cases.kept_positions_cases,
            mistakes.KEPT_POSITIONS,
        ),
        Exercise(
            "official_script_layer",
            "official_script_layer(queries, keys, threshold, window) -> kept",
            _solutions.official_script_layer,
            cases.official_script_layer_cases,
            mistakes.OFFICIAL_SCRIPT_LAYER,
        ),
    ]
}

INSTRUCTOR_NOTE = "the instructor solution was graded, not your function (instructor=True)"


def check(
    name: str,
    fn: Callable[..., Any],
    seed: int = 0,
    time_limit: float = TIME_LIMIT_S,
    instructor: bool = False,
    groups: Sequence[str] | None = None,
) -> CheckResult:
    """Grade ``fn`` as the exercise ``name`` (one of :data:`EXERCISES`), in this process.

    Args:
        name: the exercise.
        fn: the submission (called positionally, as the exercise's signature says).
        seed: seed of the random cases.
        time_limit: seconds one call of ``fn`` may run before it fails.
        instructor: grade the instructor solution instead of ``fn`` (CI, instructors); the result says so.
        groups: only the cases of these groups (``"basic"``, ``"edge"``, ``"adversarial"``; default all).
    """
    exercise = exercise_named(name)
    if instructor:
        result = grade(exercise, exercise.reference, seed=seed, time_limit=time_limit, groups=groups)
        result.note = INSTRUCTOR_NOTE
        return result
    return grade(exercise, fn, seed=seed, time_limit=time_limit, groups=groups)


def exercise_named(name: str) -> Exercise:
    """The :class:`~refreekv_edu.exercises.grading.Exercise` called ``name``; a clear error for an unknown one."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; exercises: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def check_window_scores(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``window_scores(queries (Hq, w, D), keys (Hq, L, D), scale, window) -> (col_sum (Hq, n), last_row (Hq, n))``.

    The official script's H2O ingredient: softmax of ``scale * Q K^T`` with the causal mask inside the window;
    ``col_sum`` sums the ``w`` rows over the ``n = L - w`` candidate columns, ``last_row`` is the last row on those
    columns. ``options``: ``time_limit``, ``instructor`` (see :func:`check`).
    """
    return check("window_scores", fn, seed, **options)


def check_snapkv_pool(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``snapkv_pool(scores (H, n), kernel) -> (H, n)``: max-pool, stride 1, same size, windows clipped at the edges."""
    return check("snapkv_pool", fn, seed, **options)


def check_expand_kv(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``expand_kv(keys (Hkv, L, D), group_size) -> (Hkv * G, L, D)``: query head ``h`` reads KV head ``h // G``."""
    return check("expand_kv", fn, seed, **options)


def check_group_scores(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``group_scores(scores (Hq, n), group_size) -> (Hkv, n)``: the sum over each KV head's ``G`` consecutive query heads."""
    return check("group_scores", fn, seed, **options)


def check_gqa_grouping(
    expand_kv: Callable[..., Any], group_scores: Callable[..., Any] | None = None, seed: int = 0, **options: Any
) -> CheckResult:
    """Grade both GQA pieces: ``expand_kv`` and (if given) ``group_scores``; returns the first failure, else a pass."""
    first = check_expand_kv(expand_kv, seed, **options)
    if not first or group_scores is None:
        return first
    second = check_group_scores(group_scores, seed, **options)
    if not second:
        return second
    verdicts = [replace(r, name=f"expand_kv:{r.name}") for r in first.case_results] + [
        replace(r, name=f"group_scores:{r.name}") for r in second.case_results
    ]
    n = first.n_cases + second.n_cases
    return CheckResult("gqa_grouping", True, n, n, None, [r.name for r in verdicts], first.note, verdicts)


def check_rank_candidates(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``rank_candidates(scores (H, n)) -> order (H, n)``: least important first, ties evict the older position first."""
    return check("rank_candidates", fn, seed, **options)


def check_halting_curve(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``halting_curve(last_attn (H, n), order (H, n)) -> ratio (n,)``, ``ratio(e) = (R(0) - R(e)) / R(0)``."""
    return check("halting_curve", fn, seed, **options)


def check_halting_cut(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``halting_cut(last_attn (H, n), order (H, n), threshold) -> e*`` (an int in ``[0, n-1]``)."""
    return check("halting_cut", fn, seed, **options)


def check_candidate_curve(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``candidate_curve(last_row (H, L), sinks) -> ratio (L - m,)``: sinks kept but out of the metric.

    The curve of the candidates ``[m, L)`` only, evicted oldest first (the paper's recency order).
    """
    return check("candidate_curve", fn, seed, **options)


#: The sink-exclusion exercise under the name the course uses.
check_sink_exclusion = check_candidate_curve


def check_recency_keep(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``recency_keep(last_row (H, L), sinks, threshold) -> kept (m + n - e*,)``: the sinks, then ``[m + e*, L)``."""
    return check("recency_keep", fn, seed, **options)


def check_model_budget(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``model_budget(last_rows (layers, H, L), sinks, threshold, full_layers) -> (budgets (layers,), mean)``.

    Full layers keep everything (budget 1.0) and count 100% in the mean over all layers.
    """
    return check("model_budget", fn, seed, **options)


#: The full-layers exercise under the name the course uses.
check_full_layers = check_model_budget


def check_decide_layer(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade the capstone ``decide_layer(queries (Hq, r, D), keys (Hkv, L, D), threshold, sinks, layer) -> kept (Hkv, n_kept)``.

    The paper's decision (``rk.ReFreeKV(threshold=threshold, sinks=sinks)``); layers 0 and 1 keep everything.
    """
    return check("decide_layer", fn, seed, **options)


def check_kept_positions(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``kept_positions(order (H, n), n_evicted, prompt_len, window) -> (H, n - e* + w)``, ascending, window included."""
    return check("kept_positions", fn, seed, **options)


#: The window-protection exercise under the name the course uses.
check_window_protection = check_kept_positions


def check_official_script_layer(fn: Callable[..., Any], seed: int = 0, **options: Any) -> CheckResult:
    """Grade ``official_script_layer(queries (Hq, w, D), keys (Hkv, L, D), threshold, window) -> kept (Hkv, n_kept)``.

    The official script's decision (``rk.ReFreeKV.preset("official-script")``: H2O ranking, GQA group mode,
    the last ``w`` positions protected, no sinks).
    """
    return check("official_script_layer", fn, seed, **options)
