"""The two fused operations of the algorithm, written once with a backend's array vocabulary: Eq. 1 and Eq. 2.

:meth:`refreekv_edu.backend.Backend.window_scores` and :meth:`~refreekv_edu.backend.Backend.retained_norms` call
these by default; kernel backends (Triton, Metal) override those two methods and must match these functions.
:meth:`refreekv_edu.policies.Policy.decide_layer` reads them through the backend, so a kernel is used where there
is one.

They live in their own module so that the layering has no cycle: the protocol (``backend.py``) and the algorithm
(``policies.py``) both import this module, and it imports neither (``be`` is any object with the vocabulary of
:class:`~refreekv_edu.backend.Backend`). Standard library and numpy only.
"""

from __future__ import annotations

from typing import Any

#: Array type of a backend (np.ndarray, torch.Tensor, mx.array, ...).
Array = Any


def window_attention(
    be: Any, queries: Array, keys: Array, scale: float, rows: int, n_cols: int | None = None
) -> tuple[Array, Array]:
    """Eq. 1: the softmax attention of the last ``rows`` prompt positions, reduced to what a decision reads.

    Args:
        be: the backend (a :class:`~refreekv_edu.backend.Backend`) whose vocabulary computes it.
        queries: ``(Hq, r, D)`` post-RoPE queries of the last ``r = rows`` positions; row ``i`` is position ``L - r + i``.
        keys: ``(Hkv, L, D)`` post-RoPE keys; query head ``h`` reads KV head ``h // G`` (no ``G``-fold copy).
        scale: attention scale.
        rows: ``r`` (1 for the paper: one ``q K^T`` row per head).
        n_cols: report the first ``n_cols`` key positions (default ``L - r``: those before the window).

    Returns:
        ``(col_sum, last_row)``, both ``(Hq, n_cols)``: the attention summed over the ``r`` rows (the H2O score) and
        the last row's attention ``a`` (the halting signal). Only the ``(Hq, r, L)`` block is ever materialised.
    """
    num_q_heads, _, head_dim = queries.shape
    kv_heads, length, _ = keys.shape
    n = length - rows if n_cols is None else n_cols
    # The G query heads of a KV head become G * r rows against that head's keys: one matmul per KV head.
    grouped = queries.reshape(kv_heads, (num_q_heads // kv_heads) * rows, head_dim)
    logits = be.matmul(grouped, be.transpose_last(keys)).reshape(num_q_heads, rows, length)
    logits = logits * scale + be.causal_window_mask(rows, length)  # row i sees keys <= L - r + i
    probs = be.softmax(logits, axis=-1)  # (Hq, r, L): a softmax over all L keys, float32
    return be.sum(probs[:, :, :n], axis=1), probs[:, rows - 1, :n]


def retained_norms(be: Any, a_sorted: Array) -> Array:
    """Eq. 2: ``R(e) = mean_h sqrt(sum_{k >= e} a_sorted[h, k]^2)`` for ``e = 0 .. n-1``: ``(n,)``.

    ``a_sorted`` is ``(Hq, n)``, each row in eviction order; ``be`` is the backend that computes it. The tail sums
    are a *reverse scan* of the squares, never ``total - prefix`` (which dips below zero in float32 and turns
    ``sqrt`` into NaN).
    """
    tail = be.cumsum(a_sorted * a_sorted, axis=-1, reverse=True)
    return be.mean(be.sqrt(tail), axis=0)
