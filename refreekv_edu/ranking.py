"""Importance rankings of the candidate positions (step 3 of the algorithm).

A ranking turns the window attention into a score per candidate and query head;
higher means more important. ``policies.py`` then (optionally) sums scores over the
query heads of a KV group and sorts them ascending with a *stable* sort, so the
least important candidate comes first and, among equal scores, the older position
is evicted first.

- ``h2o``: the attention the ``w`` window queries pay to the candidate, summed (the official default).
- ``snapkv``: the same sum, smoothed by a 1-D max-pool along positions (kernel 7), so a
  neighbour of an important token is kept with it.
- ``position``: ignores attention (StreamingLLM-like): the first 4 positions ("attention sinks")
  are the most important, then newer beats older.
"""

from __future__ import annotations

import numpy as np

from .backend import Array, Backend

RANKINGS = ("h2o", "snapkv", "position")
SNAPKV_KERNEL = 7
NUM_SINKS = 4


def check_ranking(name: str) -> str:
    """Return ``name`` if it is a known ranking, else raise a ValueError listing the valid ones."""
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; choose one of: {', '.join(RANKINGS)}")
    return name


def position_scores(n: int, sinks: int = NUM_SINKS) -> np.ndarray:
    """``(n,)`` float32 scores of the ``position`` ranking: sinks highest (position 0 highest), then newer > older."""
    scores = np.arange(n, dtype=np.float32)
    k = min(sinks, n)
    scores[:k] = n + (sinks - np.arange(k, dtype=np.float32))
    return scores


def rank_scores(name: str, col_sum: Array, be: Backend) -> Array:
    """Ranking scores per query head.

    Args:
        name: one of :data:`RANKINGS`.
        col_sum: ``(Hq, n)`` window attention on each candidate summed over the ``w`` window rows.
        be: the backend that owns ``col_sum``.

    Returns:
        ``(Hq, n)`` float32 scores, higher = more important.
    """
    check_ranking(name)
    if name == "h2o":
        return col_sum
    if name == "snapkv":
        return be.max_pool1d(col_sum, SNAPKV_KERNEL)
    heads, n = col_sum.shape
    return be.asarray(np.broadcast_to(position_scores(n), (heads, n)).copy())
