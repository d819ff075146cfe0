"""Importance rankings of the candidate positions (step 2 of the algorithm).

A ranking turns the candidates ``[m, L - w)`` into a score per candidate and query head;
higher means more important. ``policies.py`` then (optionally) sums scores over the
query heads of a KV group and sorts them ascending with a *stable* sort, so the
least important candidate comes first and, among equal scores, the older position
is evicted first.

- ``recency`` (the paper): ignores attention; newer beats older, so the oldest candidate is evicted
  first and every head shares one order. The sinks are not candidates (the policy keeps them).
- ``h2o``: the attention the ``w`` window queries pay to the candidate, summed (the official script).
- ``snapkv``: the same sum, smoothed by a 1-D max-pool along positions (kernel 7), so a
  neighbour of an important token is kept with it.
"""

from __future__ import annotations

import numpy as np

from .backend import Array, Backend

RANKINGS = ("recency", "h2o", "snapkv")
#: The rankings that read the window queries' attention (they need ``window >= 1``).
WINDOW_RANKINGS = ("h2o", "snapkv")
SNAPKV_KERNEL = 7


def check_ranking(name: str) -> str:
    """Return ``name`` if it is a known ranking, else raise a ValueError listing the valid ones."""
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; choose one of: {', '.join(RANKINGS)}")
    return name


def recency_scores(n: int) -> np.ndarray:
    """``(n,)`` float32 scores of the ``recency`` ranking: the candidate's index, so newer beats older."""
    return np.arange(n, dtype=np.float32)


def rank_scores(name: str, col_sum: Array, be: Backend) -> Array:
    """Ranking scores per query head.

    Args:
        name: one of :data:`RANKINGS`.
        col_sum: ``(Hq, n)`` window attention on each candidate summed over the window rows (unused by ``recency``).
        be: the backend that owns ``col_sum``.

    Returns:
        ``(Hq, n)`` float32 scores, higher = more important.
    """
    check_ranking(name)
    if name == "recency":
        heads, n = col_sum.shape
        return be.asarray(np.broadcast_to(recency_scores(n), (heads, n)).copy())
    if name == "h2o":
        return col_sum
    return be.max_pool1d(col_sum, SNAPKV_KERNEL)  # snapkv
