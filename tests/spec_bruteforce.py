"""A slow, loop-by-loop transcription of the design's algorithm, in float64.

Independent of ``refreekv_edu``'s code path (no backend, no vectorised tricks): the
tests compare the reference backend and every other backend with it.
"""

from __future__ import annotations

import math

import numpy as np


def window_probs(q: np.ndarray, k: np.ndarray, scale: float, window: int) -> np.ndarray:
    """``(Hq, w, L)`` softmax attention of the last ``w`` queries, causal inside the window (float64)."""
    hq, _, _ = q.shape
    hkv, length, _ = k.shape
    g = hq // hkv
    out = np.zeros((hq, window, length))
    for h in range(hq):
        for i in range(window):
            pos = length - window + i
            logits = [
                scale * float(np.dot(q[h, -window + i].astype(np.float64), k[h // g, j].astype(np.float64)))
                for j in range(pos + 1)
            ]
            m = max(logits)
            ex = [math.exp(x - m) for x in logits]
            s = sum(ex)
            for j in range(pos + 1):
                out[h, i, j] = ex[j] / s
    return out


def ranking_scores(probs: np.ndarray, cols: range, ranking: str) -> np.ndarray:
    """``(Hq, n)`` scores of the candidate columns ``cols`` (higher = more important)."""
    hq = probs.shape[0]
    col = probs[:, :, list(cols)].sum(axis=1)
    if ranking == "h2o":
        return col
    n = len(cols)
    if ranking == "snapkv":
        return np.array([[max(col[h, max(0, j - 3) : j + 4]) for j in range(n)] for h in range(hq)])
    assert ranking == "recency"
    return np.array([[float(j) for j in range(n)] for _ in range(hq)])


def decide(
    q,
    k,
    threshold=None,
    budget=None,
    window=8,
    ranking="h2o",
    gqa="group",
    scale=None,
    orders=None,
    sinks=0,
    sinks_in_metric=False,
    full_layers=(),
    layer=None,
):
    """Returns ``(kept (H, n_kept), n_evicted, ratio (n,), scores (H, n))`` computed by plain loops.

    The spec of DESIGN.md: sinks ``[0, m)`` and the window ``[L - w, L)`` are kept, the candidates ``[m, L - w)``
    are ranked, the signal is the last prompt row's softmax over all ``L`` keys, restricted to the candidates
    (plus the sinks when ``sinks_in_metric``), and ``e*`` is the largest count within the threshold.
    ``orders`` (H, n) replaces the brute-force ranking order (to check the halting rule alone).
    """
    hq, _, d = q.shape
    hkv, length, _ = k.shape
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    owners = hkv if gqa == "group" else hq
    everything = np.tile(np.arange(length), (owners, 1))
    if layer is not None and layer in full_layers:
        return everything, 0, np.zeros(0), np.zeros((owners, 0))
    m = min(sinks, length)
    w = min(window, length - m)
    n = length - m - w
    if n <= 0:
        return everything, 0, np.zeros(0), np.zeros((owners, 0))
    rows = w if ranking in ("h2o", "snapkv") else 1
    probs = window_probs(q, k, scale, rows)
    cand = range(m, length - w)
    scores = ranking_scores(probs, cand, ranking)
    if gqa == "group":
        scores = np.array([scores[o * g : (o + 1) * g].sum(axis=0) for o in range(hkv)])
    # least important first; ties -> older (smaller index) first
    if orders is None:
        orders = [sorted(range(n), key=lambda j, o=o: (scores[o, j], j)) for o in range(owners)]
    orders = [list(map(int, row)) for row in orders]
    a = probs[:, rows - 1, :]  # the last prompt row over all L keys
    norms = []
    for e in range(n):
        per_head = []
        for h in range(hq):
            o = h // g if gqa == "group" else h
            total = sum(a[h, m + j] ** 2 for j in orders[o][e:])
            if sinks_in_metric:
                total += sum(a[h, j] ** 2 for j in range(m))
            per_head.append(math.sqrt(total))
        norms.append(sum(per_head) / hq)
    ratio = np.array([(norms[0] - r) / norms[0] if norms[0] > 0 else 0.0 for r in norms])
    if threshold is not None:
        e_star = max(e for e in range(n) if ratio[e] <= threshold)
    elif budget is not None:
        e_star = n - min(n, max(1, math.ceil(budget * length - 1e-9) - m - w))
    else:
        e_star = 0
    kept = np.array(
        [list(range(m)) + sorted(m + j for j in orders[o][e_star:]) + list(range(length - w, length)) for o in range(owners)]
    )
    return kept, e_star, ratio, scores
