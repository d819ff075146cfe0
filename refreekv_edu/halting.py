"""The halting rule: the retained-norm curve and the cut (Eq. 2-3 of the paper).

Notation (numpy arrays, float32):

- ``a`` with shape ``(H, n)``: the halting signal, the last prompt token's attention on each of the
  ``n`` candidates, per query head ``h``.
- ``order`` with shape ``(H_o, n)``: each head's candidate indices, least important first. ``H_o`` is ``H``
  (one order per query head) or divides ``H``: with GQA in ``group`` mode the ``G = H / H_o``
  consecutive query heads of a KV head share that KV head's order.

For every eviction count ``e = 0 .. n-1`` (evict the ``e`` least important candidates of each head)::

    r_h(e)   = sqrt( sum_{k >= e} a[h, order[h, k]]^2 )         # L2 norm of the attention still kept
    R(e)     = mean_h r_h(e)
    ratio(e) = (R(0) - R(e)) / R(0)                              # share of the norm lost, non-decreasing
    e*       = max { e in [0, n-1] : ratio(e) <= threshold }     # evict as much as stays within the threshold

``e <= n - 1`` means at least one candidate always stays. Positions that are never evicted but still
count in the norm (the sinks, in the ``"sinks-in-metric"`` ablation) are passed as ``always_kept``
``(H, k)``: they join every tail sum. If ``R(0) == 0`` (no candidate receives any
attention) nothing can be lost, ``ratio`` is 0 everywhere and ``e* = n - 1``. The tail sums are computed
as a *reverse scan* of the squares, never as ``total - prefix``, which goes slightly negative in float32
and turns ``sqrt`` into NaN.
"""

from __future__ import annotations

import numpy as np

from .backend import Array, Backend

#: Below this largest attention value the squares of ``a`` come close to float32's underflow (~1e-38).
TINY_PEAK = 1e-15
#: Above this largest value the squares (and their sums) would overflow float32 (~3.4e38).
HUGE_PEAK = 1e15


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float if it lies in ``[0, 1)``, else raise a ValueError saying why."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number in [0, 1), got {threshold!r}") from None
    if not np.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"threshold must lie in [0, 1) (the share of the attention norm you accept to lose), got {threshold!r}; "
            "the paper's T is 0.01"
        )
    return value


def expand_order(order: np.ndarray, num_heads: int) -> np.ndarray:
    """Repeat each row of ``order`` ``(H_o, n)`` so that it serves ``num_heads`` heads: ``(num_heads, n)``."""
    if num_heads % order.shape[0]:
        raise ValueError(
            f"order has {order.shape[0]} rows, which does not divide the {num_heads} heads of last_attn; "
            "pass one order per head, or one per KV head of a GQA group"
        )
    return np.repeat(order, num_heads // order.shape[0], axis=0)


def ratio_from_norms(mean_norms: np.ndarray) -> np.ndarray:
    """``ratio(e) = (R(0) - R(e)) / R(0)`` from ``R`` of shape ``(n,)``; all zeros when ``R(0) == 0``."""
    mean_norms = np.asarray(mean_norms, dtype=np.float32)
    if mean_norms.size == 0 or mean_norms[0] <= 0:
        return np.zeros_like(mean_norms)
    return ((mean_norms[0] - mean_norms) / mean_norms[0]).astype(np.float32)


def cut_from_ratio(ratio: np.ndarray, threshold: float) -> int:
    """``e* = max { e : ratio(e) <= threshold }`` for ``ratio`` of shape ``(n,)`` (0 when ``n <= 1``)."""
    ok = np.flatnonzero(np.asarray(ratio) <= threshold)
    return int(ok[-1]) if ok.size else 0


def ratio_curve(a_sorted: Array, be: Backend, peak: float) -> np.ndarray:
    """``ratio(e)`` for ``e = 0 .. n-1`` (numpy ``(n,)``) from ``a_sorted`` ``(H, n)`` on backend ``be``.

    When even the largest entry ``peak`` is tiny, the squares would underflow float32 (below ~1e-38) and
    every ratio would read 0; ``a`` is then divided by ``peak`` first, which leaves the ratio unchanged
    (it does not depend on the scale of ``a``). Ordinary attention never takes that branch.
    """
    if 0 < peak < TINY_PEAK:
        a_sorted = a_sorted * (1.0 / peak)
    return ratio_from_norms(be.to_numpy(be.retained_norms(a_sorted)))


def _validate(last_attn: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.iscomplexobj(last_attn):
        raise TypeError("last_attn must be real attention weights, got complex values")
    try:
        last_attn = np.asarray(last_attn, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("last_attn must be a numeric (H, n) array of attention weights") from None
    order = np.asarray(order)
    if last_attn.ndim != 2 or order.ndim != 2:
        raise ValueError(f"last_attn and order must be 2-D (H, n); got shapes {last_attn.shape} and {order.shape}")
    if order.shape[1] != last_attn.shape[1]:
        raise ValueError(f"last_attn has n={last_attn.shape[1]} candidates but order has n={order.shape[1]}")
    if not np.all(np.isfinite(last_attn)):
        raise ValueError("last_attn contains NaN or inf; check the attention computation upstream")
    if last_attn.size and last_attn.min() < 0:
        raise ValueError("last_attn must be non-negative (softmax attention weights); got negative values")
    # ratio(e) does not depend on the scale of a: bring a peak outside float32's comfortable range to 1 first
    # (in float64), so that squares neither underflow (a * 1e-44) nor overflow (a * 1e20).
    peak = float(last_attn.max()) if last_attn.size else 0.0
    if 0 < peak < TINY_PEAK or peak > HUGE_PEAK:
        last_attn = last_attn / peak
    last_attn = last_attn.astype(np.float32)
    n = order.shape[1]
    if not np.issubdtype(order.dtype, np.integer) or (
        n and not np.array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(n), order.shape))
    ):
        raise ValueError("each row of order must be a permutation of 0..n-1 (candidate indices, least important first)")
    return last_attn, expand_order(order, last_attn.shape[0])


def _check_always_kept(always_kept: np.ndarray | None, heads: int) -> np.ndarray:
    if always_kept is None:
        return np.zeros((heads, 0), dtype=np.float32)
    kept = np.asarray(always_kept, dtype=np.float32)
    if kept.ndim != 2 or kept.shape[0] != heads:
        raise ValueError(f"always_kept must be (H={heads}, k), got shape {kept.shape}")
    if not np.all(np.isfinite(kept)) or (kept.size and kept.min() < 0):
        raise ValueError("always_kept must hold finite, non-negative attention weights")
    return kept


def halting_curve(
    last_attn: np.ndarray,
    order: np.ndarray,
    backend: str | Backend = "numpy",
    always_kept: np.ndarray | None = None,
) -> np.ndarray:
    """The ratio curve of Eq. 2.

    Args:
        last_attn: ``(H, n)`` halting signal ``a`` (non-negative).
        order: ``(H, n)`` or ``(H / G, n)`` candidate indices, least important first.
        backend: backend that computes the scan (default numpy reference).
        always_kept: ``(H, k)`` attention on positions never evicted that still count in the norm (default none).

    Returns:
        ``(n,)`` float32 ``ratio(e)``, ``e = 0 .. n-1``; non-decreasing.
    """
    from .backend import get_backend

    last_attn, order = _validate(last_attn, order)
    kept = _check_always_kept(always_kept, last_attn.shape[0])
    n = last_attn.shape[1]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    be = get_backend(backend)
    # The always-kept positions go after every candidate in the order: counted in every tail, never reached.
    a_sorted = np.concatenate([np.take_along_axis(last_attn, order, axis=1), kept], axis=1)
    return ratio_curve(be.asarray(a_sorted), be, float(a_sorted.max()))[:n]


def halting_cut(
    last_attn: np.ndarray, order: np.ndarray, threshold: float, always_kept: np.ndarray | None = None
) -> int:
    """The conformance point: ``e*``, how many candidates each head evicts (Eq. 3).

    Args:
        last_attn: ``(H, n)`` float, the last prompt token's attention on the ``n`` candidates per query head.
        order: ``(H, n)`` (or ``(H / G, n)`` for GQA groups) int, candidate indices least important first.
        threshold: in ``[0, 1)``; the largest share of the mean retained L2 norm that may be lost.
        always_kept: ``(H, k)`` attention on positions that are never evicted but count in the norm (the sinks
            in the ``"sinks-in-metric"`` ablation); default none.

    Returns:
        ``e* = max { e in [0, n-1] : ratio(e) <= threshold }`` (0 when ``n <= 1``).

    Example:
        >>> import numpy as np
        >>> a = np.array([[0.1, 0.0, 0.7, 0.2]])
        >>> order = np.argsort(a, axis=1, kind="stable")      # least attended first: [1, 0, 3, 2]
        >>> halting_cut(a, order, threshold=0.02)             # dropping 0.0 and 0.1 loses 0.9% of the norm
        2
        >>> halting_cut(a, order, threshold=0.05)             # dropping 0.2 as well loses 4.7%; one candidate stays
        3
    """
    threshold = check_threshold(threshold)
    return cut_from_ratio(halting_curve(last_attn, order, always_kept=always_kept), threshold)
