"""Instructor solutions: one short numpy function per exercise.

Each function is the spec of its exercise written as plainly as possible; the checkers in
:mod:`refreekv_edu.exercises.checks` grade a submission against these. They follow the
library (``reference.py``, ``ranking.py``, ``halting.py``, ``policies.py``) step for step,
and ``tests/exercises`` proves that they agree with it.

Shapes: ``Hq`` query heads, ``Hkv`` key/value heads, ``G = Hq / Hkv``, ``L`` prompt length,
``w`` observation window, ``n = L - w`` candidates, ``D`` head dim, ``H`` any number of heads.
"""

from __future__ import annotations

import numpy as np


def window_scores(queries: np.ndarray, keys: np.ndarray, scale: float, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 4: the window attention, reduced to what the algorithm needs.

    Args:
        queries: ``(Hq, w, D)`` queries of the last ``w`` prompt positions.
        keys: ``(Hq, L, D)`` keys of the whole prompt (already one per query head).
        scale: attention scale, usually ``1 / sqrt(D)``.
        window: ``w``.

    Returns:
        ``(col_sum, last_row)``, both ``(Hq, n)`` float32: the attention each candidate receives summed over
        the ``w`` window rows, and the last row's attention on each candidate.
    """
    q = np.asarray(queries, dtype=np.float32)
    k = np.asarray(keys, dtype=np.float32)
    length = k.shape[1]
    n = length - window
    logits = scale * (q @ k.transpose(0, 2, 1))  # (Hq, w, L)
    # Causal mask: window row i sits at absolute position L - w + i and must not see later keys.
    row_pos = np.arange(length - window, length)[:, None]
    col_pos = np.arange(length)[None, :]
    logits = np.where(col_pos <= row_pos, logits, -np.inf)
    logits = logits - logits.max(axis=-1, keepdims=True)  # stable softmax: the max entry becomes exp(0) = 1
    probs = np.exp(logits)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    col_sum = probs[:, :, :n].sum(axis=1)
    last_row = probs[:, window - 1, :n]
    return col_sum.astype(np.float32), last_row.astype(np.float32)


def snapkv_pool(scores: np.ndarray, kernel: int) -> np.ndarray:
    """SnapKV smoothing: max-pool ``(H, n)`` scores along positions, stride 1, same size, windows clipped at the edges.

    ``out[h, i] = max(scores[h, i - kernel // 2 : i + kernel - kernel // 2])`` (indices clipped to ``[0, n)``).
    """
    scores = np.asarray(scores, dtype=np.float32)
    n = scores.shape[1]
    half = kernel // 2
    out = np.empty_like(scores)
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + kernel - half)
        out[:, i] = scores[:, lo:hi].max(axis=1)
    return out


def expand_kv(keys: np.ndarray, group_size: int) -> np.ndarray:
    """GQA: ``(Hkv, L, D) -> (Hkv * G, L, D)``; query head ``h`` uses KV head ``h // G`` (consecutive blocks)."""
    return np.repeat(np.asarray(keys), group_size, axis=0)


def group_scores(scores: np.ndarray, group_size: int) -> np.ndarray:
    """GQA ``group`` mode: ``(Hq, n) -> (Hkv, n)``, the sum of the ``G`` consecutive query heads of each KV head."""
    scores = np.asarray(scores, dtype=np.float32)
    num_q_heads, n = scores.shape
    return scores.reshape(num_q_heads // group_size, group_size, n).sum(axis=1)


def rank_candidates(scores: np.ndarray) -> np.ndarray:
    """Step 3: ``(H, n)`` scores -> ``(H, n)`` int64 candidate indices, least important first.

    A *stable* ascending sort: among equal scores the older (smaller) position comes first, so it is evicted first.
    """
    return np.argsort(np.asarray(scores), axis=1, kind="stable").astype(np.int64)


def halting_curve(last_attn: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Step 5: the share of the attention norm lost when each head evicts its ``e`` least important candidates.

    Args:
        last_attn: ``(H, n)`` the halting signal ``a`` (last prompt token's attention on the candidates).
        order: ``(H, n)`` candidate indices per head, least important first.

    Returns:
        ``(n,)`` float32 ``ratio(e) = (R(0) - R(e)) / R(0)`` with ``R(e) = mean_h sqrt(sum_{k >= e} a_sorted[h, k]^2)``.
    """
    a_sorted = np.take_along_axis(np.asarray(last_attn, dtype=np.float32), np.asarray(order), axis=1)
    squares = a_sorted * a_sorted
    # Reverse scan: tail[h, e] = sum_{k >= e} squares[h, k]. Flip, cumsum, flip back -- never total - prefix.
    tail = np.flip(np.cumsum(np.flip(squares, axis=1), axis=1), axis=1)
    mean_norm = np.sqrt(tail).mean(axis=0)  # R(e), (n,)
    if mean_norm.size == 0 or mean_norm[0] <= 0:
        return np.zeros_like(mean_norm)
    return ((mean_norm[0] - mean_norm) / mean_norm[0]).astype(np.float32)


def halting_cut(last_attn: np.ndarray, order: np.ndarray, threshold: float) -> int:
    """Step 6: ``e* = max { e in [0, n-1] : ratio(e) <= threshold }`` -- evict as much as the threshold allows.

    ``e`` stops at ``n - 1``, so at least one candidate always stays; ``ratio(0) = 0``, so ``e* >= 0``.

    Args:
        last_attn: ``(H, n)`` the halting signal ``a`` (last prompt token's attention on the candidates).
        order: ``(H, n)`` candidate indices per head, least important first.
        threshold: halting threshold in ``[0, 1)``.

    Returns:
        ``e*``, the number of candidates each head evicts (0 when there are no candidates).
    """
    ratio = halting_curve(last_attn, order)
    allowed = np.flatnonzero(ratio <= threshold)
    return int(allowed[-1]) if allowed.size else 0


def kept_positions(order: np.ndarray, n_evicted: int, prompt_len: int, window: int) -> np.ndarray:
    """Step 7: ``(H, n)`` order -> ``(H, n - e* + w)`` kept positions per head, ascending, window included."""
    order = np.asarray(order, dtype=np.int64)
    kept_candidates = np.sort(order[:, n_evicted:], axis=1)  # drop the e* least important of each head
    window_pos = np.arange(prompt_len - window, prompt_len, dtype=np.int64)  # always kept
    return np.concatenate([kept_candidates, np.broadcast_to(window_pos, (order.shape[0], window))], axis=1)


def decide_layer(queries: np.ndarray, keys: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """The capstone: steps 1-7 of ReFreeKV (h2o ranking, GQA ``group`` mode) from the exercises above.

    Args:
        queries: ``(Hq, w, D)`` queries of the last ``w`` prompt positions.
        keys: ``(Hkv, L, D)`` keys of the prompt, ``L > w``.
        threshold: halting threshold in ``[0, 1)``.
        window: ``w``.

    Returns:
        ``(Hkv, n_kept)`` int64 kept positions per KV head, ascending.
    """
    num_q_heads, _, head_dim = queries.shape
    num_kv_heads, length, _ = keys.shape
    group = num_q_heads // num_kv_heads
    col_sum, last_row = window_scores(queries, expand_kv(keys, group), 1.0 / np.sqrt(head_dim), window)
    order = rank_candidates(group_scores(col_sum, group))  # (Hkv, n): one order per KV head
    n_evicted = halting_cut(last_row, expand_kv(order, group), threshold)  # each query head uses its KV head's order
    return kept_positions(order, n_evicted, length, window)
