"""Instructor solutions: one short numpy function per exercise.

Each function is the spec of its exercise written as plainly as possible; the checkers in
:mod:`refreekv_edu.exercises.checks` grade a submission against these. They follow the
library (``reference.py``, ``ranking.py``, ``halting.py``, ``policies.py``) step for step,
and ``tests/exercises`` proves that they agree with it: the paper's method is ``rk.ReFreeKV()``
(:func:`candidate_curve`, :func:`recency_keep`, :func:`model_budget`, :func:`decide_layer`), the
official script is ``rk.ReFreeKV.preset("official-script")`` (:func:`window_scores`,
:func:`rank_candidates`, :func:`kept_positions`, :func:`official_script_layer`).

This module is for instructors: the student-facing package ``refreekv_edu.exercises`` does not
import it into its namespace (import it explicitly: ``from refreekv_edu.exercises import solutions``).

Shapes: ``Hq`` query heads, ``Hkv`` key/value heads, ``G = Hq / Hkv``, ``L`` prompt length,
``m`` sinks, ``w`` observation window, ``n`` candidates (``L - m`` for the paper, ``L - w`` for
the official script), ``D`` head dim, ``H`` any number of heads.
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


def candidate_curve(last_row: np.ndarray, sinks: int) -> np.ndarray:
    """The paper's curve: the sinks are kept but left OUT of the metric; candidates are evicted oldest first.

    Args:
        last_row: ``(H, L)`` the last prompt token's attention on every prompt position (softmax over all ``L``).
        sinks: ``m``, the attention sinks ``[0, m)``: always kept, not candidates, not in the norm.

    Returns:
        ``(n,)`` float32 ``ratio(e)``, ``n = L - m``: the halting curve of the candidates ``[m, L)`` in recency
        order (candidate ``k`` is position ``m + k``; the oldest goes first, the newest last).
    """
    a = np.asarray(last_row, dtype=np.float32)[:, sinks:]  # (H, n): the candidates only, the sinks sliced off
    oldest_first = np.broadcast_to(np.arange(a.shape[1], dtype=np.int64), a.shape)  # one order for every head
    return halting_curve(a, oldest_first)


def recency_keep(last_row: np.ndarray, sinks: int, threshold: float) -> np.ndarray:
    """The paper's keep step: the sinks, then the newest candidates ``[m + e*, L)``, one set for every head.

    Args:
        last_row: ``(H, L)`` the last prompt token's attention on every prompt position.
        sinks: ``m``.
        threshold: ``T`` in ``[0, 1)``.

    Returns:
        ``(m + n - e*,)`` int64 kept positions, ascending, with ``e* = max { e : ratio(e) <= T }`` on
        :func:`candidate_curve`.
    """
    length = np.asarray(last_row).shape[1]
    sinks = min(sinks, length)
    ratio = candidate_curve(last_row, sinks)
    allowed = np.flatnonzero(ratio <= threshold)
    n_evicted = int(allowed[-1]) if allowed.size else 0  # at most n - 1: the newest candidate always stays
    return np.concatenate([np.arange(sinks), np.arange(sinks + n_evicted, length)]).astype(np.int64)


def model_budget(
    last_rows: np.ndarray, sinks: int, threshold: float, full_layers: tuple[int, ...]
) -> tuple[np.ndarray, float]:
    """Full layers: the layers in ``full_layers`` keep everything and count 100% in the model's mean budget.

    Args:
        last_rows: ``(layers, H, L)`` the last prompt token's attention, one ``(H, L)`` row block per layer.
        sinks: ``m``.
        threshold: ``T``.
        full_layers: layer indices never pruned, e.g. ``(0, 1)`` (the paper's Appendix B).

    Returns:
        ``(budgets, mean_budget)``: ``(layers,)`` float64 share of the prompt each layer keeps, ``(m + n - e*) / L``
        for a pruned layer and ``1.0`` for a full one, and their plain mean over ALL layers.
    """
    last_rows = np.asarray(last_rows, dtype=np.float32)
    length = last_rows.shape[2]
    budgets = np.ones(last_rows.shape[0], dtype=np.float64)
    for layer, last_row in enumerate(last_rows):
        if layer not in full_layers:  # a full layer keeps its whole cache: budget 1.0, nothing to decide
            budgets[layer] = len(recency_keep(last_row, sinks, threshold)) / length
    return budgets, float(budgets.mean())


def last_row_attention(queries: np.ndarray, keys: np.ndarray, scale: float) -> np.ndarray:
    """Eq. 1: ``(Hq, r, D)``, ``(Hkv, L, D)`` -> ``(Hq, L)``, the last query row's softmax over all ``L`` keys.

    Query head ``h`` reads KV head ``h // G``. (A helper of :func:`decide_layer`, not an exercise.)
    """
    q = np.asarray(queries, dtype=np.float32)[:, -1, :]  # (Hq, D): the LAST prompt position only
    k = expand_kv(np.asarray(keys, dtype=np.float32), q.shape[0] // keys.shape[0])  # (Hq, L, D)
    logits = scale * np.einsum("hd,hld->hl", q, k)  # the last row sees every key: no mask needed
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


#: The paper's full layers (Appendix B): layers 0 and 1 are never pruned.
PAPER_FULL_LAYERS = (0, 1)


def decide_layer(queries: np.ndarray, keys: np.ndarray, threshold: float, sinks: int, layer: int) -> np.ndarray:
    """The capstone: ``rk.ReFreeKV(threshold=threshold, sinks=sinks)`` (the paper) deciding layer ``layer``.

    Args:
        queries: ``(Hq, r, D)`` queries of the last ``r >= 1`` prompt positions (only the last row is read).
        keys: ``(Hkv, L, D)`` keys of the prompt.
        threshold: ``T``.
        sinks: ``m``.
        layer: the layer index; layers 0 and 1 keep everything.

    Returns:
        ``(Hkv, n_kept)`` int64 kept positions per KV head, ascending (the same set for every head).
    """
    num_kv_heads, length, head_dim = keys.shape
    if layer in PAPER_FULL_LAYERS:
        kept = np.arange(length, dtype=np.int64)
    else:
        last_row = last_row_attention(queries, keys, 1.0 / np.sqrt(head_dim))
        kept = recency_keep(last_row, sinks, threshold)
    return np.broadcast_to(kept, (num_kv_heads, kept.size)).copy()


def official_script_layer(queries: np.ndarray, keys: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """The official script's decision (``rk.ReFreeKV.preset("official-script")``: no sinks, no full layers,
    H2O ranking, the last ``w`` positions protected, GQA ``group`` mode) from the exercises above.

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
