"""Typical wrong answers, written out, each with the hint a student needs.

When a submission fails a case, the grader runs these on the same case; the first one that
reproduces the submission's output names the mistake. They are what students actually write
(and what we wrote ourselves on a bad day): a forgotten mask, an L1 norm, ``total - prefix``,
heads interleaved instead of grouped, an off-by-one cut, an unprotected window, the sinks counted in
the norm, the newest evicted first, layer 0 pruned.
"""

from __future__ import annotations

import numpy as np

from . import solutions as ref
from .grading import Mistake


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _window_probs(q, k, scale, window, *, mask=True, use_scale=True, axis=-1, stable=True, strict=False):
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    length = k.shape[1]
    logits = (scale if use_scale else 1.0) * q @ k.transpose(0, 2, 1)
    if mask:
        rows = np.arange(length - window, length)[:, None]
        cols = np.arange(length)[None, :]
        logits = np.where(cols < rows if strict else cols <= rows, logits, -np.inf)
    if stable:
        return softmax(logits, axis)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(logits.astype(np.float32))
        return e / e.sum(axis=axis, keepdims=True)


def _reduce(p, window, *, row=-1, mean=False):
    n = p.shape[2] - window
    col = p[:, :, :n].mean(axis=1) if mean else p[:, :, :n].sum(axis=1)
    return col, p[:, row, :n]


WINDOW_SCORES = [
    Mistake(
        "no-causal-mask",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w, mask=False), w),
        "the softmax saw keys *after* each window query: add the causal mask (window row i may only see keys "
        "<= position L - w + i, set the rest to -inf) before the softmax.",
    ),
    Mistake(
        "mask-hides-diagonal",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w, strict=True), w),
        "your mask also hides each query's own position: a token attends to itself, use key_pos <= query_pos.",
    ),
    Mistake(
        "no-scale",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w, use_scale=False), w),
        "multiply Q K^T by `scale` before the softmax.",
    ),
    Mistake(
        "softmax-over-rows",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w, axis=1), w),
        "the softmax normalises each query's row over the keys (axis=-1), not over the window queries (axis=1).",
    ),
    Mistake(
        "first-row",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w), w, row=0),
        "last_row is the attention of the LAST prompt token: probs[:, w - 1, :n] (or probs[:, -1, :n]), not row 0.",
    ),
    Mistake(
        "mean-over-rows",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w), w, mean=True),
        "col_sum is the SUM over the w window rows, not the mean.",
    ),
    Mistake(
        "unstable-softmax",
        lambda q, k, s, w: _reduce(_window_probs(q, k, s, w, stable=False), w),
        "exp() of large logits overflows to inf and inf/inf = NaN: subtract each row's max before exp().",
    ),
    Mistake(
        "all-columns",
        lambda q, k, s, w: tuple(x for x in (_window_probs(q, k, s, w).sum(1), _window_probs(q, k, s, w)[:, -1])),
        "return only the n = L - w candidate columns ([:, :n]); the window's own columns are never candidates.",
    ),
]


def _pool(scores, kernel, mode):
    scores = np.asarray(scores, np.float32)
    n = scores.shape[1]
    if mode == "valid":
        return np.stack([scores[:, i : i + kernel].max(1) for i in range(max(n - kernel + 1, 0))], axis=1)
    if mode == "left":
        return np.stack([scores[:, i : i + kernel].max(1) for i in range(n)], axis=1)
    half = kernel // 2
    return np.stack([scores[:, max(0, i - half) : i + kernel - half].mean(1) for i in range(n)], axis=1)


SNAPKV_POOL = [
    Mistake(
        "no-pooling",
        lambda s, k: np.asarray(s),
        "the scores came back unchanged: take the max over a window of `kernel` positions around each one.",
    ),
    Mistake(
        "valid-pooling",
        lambda s, k: _pool(s, k, "valid"),
        "the output must have the same size n: clip the windows at the edges instead of dropping the edge positions.",
    ),
    Mistake(
        "left-aligned",
        lambda s, k: _pool(s, k, "left"),
        "centre the window on position i (i - kernel//2 .. i + kernel//2), not i .. i + kernel - 1.",
    ),
    Mistake("average-pooling", lambda s, k: _pool(s, k, "mean"), "SnapKV uses MAX pooling, not the average."),
]

EXPAND_KV = [
    Mistake(
        "interleaved",
        lambda k, g: np.tile(np.asarray(k), (g, 1, 1)),
        "heads are interleaved (np.tile gives 0,1,2,0,1,2): query head h uses KV head h // G, so repeat each KV "
        "head G times consecutively (np.repeat(keys, G, axis=0) gives 0,0,0,1,1,1).",
    ),
    Mistake(
        "repeat-positions",
        lambda k, g: np.repeat(np.asarray(k), g, axis=1),
        "you repeated along the positions axis; repeat the heads axis (axis=0).",
    ),
]

GROUP_SCORES = [
    Mistake(
        "interleaved",
        lambda s, g: np.asarray(s).reshape(g, -1, np.asarray(s).shape[1]).sum(0),
        "you summed heads h, h + Hkv, h + 2 Hkv (interleaved); the G query heads of KV head j are the consecutive "
        "heads j*G .. j*G + G - 1: reshape(Hkv, G, n).sum(axis=1).",
    ),
    Mistake(
        "mean",
        lambda s, g: np.asarray(s).reshape(-1, g, np.asarray(s).shape[1]).mean(1),
        "the spec sums the group's scores (the mean would rank the same, but the scores must match the library).",
    ),
    Mistake(
        "max",
        lambda s, g: np.asarray(s).reshape(-1, g, np.asarray(s).shape[1]).max(1),
        "sum the scores of the group's query heads; max lets one head decide for all.",
    ),
    Mistake(
        "no-grouping",
        lambda s, g: np.asarray(s),
        "you returned one row per query head; group_scores returns one row per KV head (Hq / G rows).",
    ),
]

RANK_CANDIDATES = [
    Mistake(
        "most-important-first",
        lambda s: np.argsort(-np.asarray(s), axis=1, kind="stable"),
        "the order must be LEAST important first (ascending scores): the first e entries are the ones evicted.",
    ),
    Mistake(
        "unstable-sort",
        lambda s: np.argsort(np.asarray(s), axis=1),
        "equal scores came out in a scrambled order: np.argsort's default quicksort is not stable; pass kind='stable' "
        "so that among equal scores the older position is evicted first.",
    ),
    Mistake(
        "ties-newest-first",
        lambda s: np.argsort(-np.asarray(s), axis=1, kind="stable")[:, ::-1],
        "reversing a descending sort also reverses the ties (newer evicted first); sort ascending with kind='stable' instead.",
    ),
    Mistake(
        "sorted-values",
        lambda s: np.sort(np.asarray(s), axis=1),
        "return the candidate INDICES (np.argsort), not the sorted scores (np.sort).",
    ),
]


def _tail(sq, how):
    if how == "total-minus-prefix":
        with np.errstate(invalid="ignore"):
            return sq.sum(1, keepdims=True) - np.cumsum(sq, 1) + sq
    if how == "exclusive":
        return np.flip(np.cumsum(np.flip(sq, 1), 1), 1) - sq
    return np.flip(np.cumsum(np.flip(sq, 1), 1), 1)


def curve_variant(last_attn, order, *, norm="l2", tail="scan", sort="order", combine="ratio-of-means", lost=True):
    a = np.asarray(last_attn, np.float32)
    if sort == "order":
        a = np.take_along_axis(a, np.asarray(order), 1)
    elif sort == "reversed":
        a = np.take_along_axis(a, np.asarray(order), 1)[:, ::-1]
    if norm == "l1":
        r = _tail(np.abs(a), tail)
    else:
        t = _tail(a * a, tail)
        with np.errstate(invalid="ignore"):
            r = t if norm == "squared" else np.sqrt(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        if combine == "mean-of-ratios":
            per_head = (r[:, :1] - r) / r[:, :1]
            return per_head.mean(0)
        big_r = r.mean(0)
        return (big_r[0] - big_r) / big_r[0] if lost else big_r / big_r[0]


HALTING_CURVE = [
    # Right on every input except R(0) == 0, so it only ever matches there.
    Mistake(
        "no-zero-guard",
        lambda a, o: curve_variant(a, o),
        "when R(0) == 0 (no attention on any candidate) return zeros instead of dividing 0 by 0.",
    ),
    Mistake(
        "l1-norm",
        lambda a, o: curve_variant(a, o, norm="l1"),
        "you used the L1 norm (a plain sum of attention); the rule uses the L2 norm: r_h(e) = sqrt(sum of a^2 over the kept).",
    ),
    Mistake(
        "no-sqrt",
        lambda a, o: curve_variant(a, o, norm="squared"),
        "r_h(e) is the square ROOT of the sum of squares; you compared the squared norms.",
    ),
    Mistake(
        "total-minus-prefix",
        lambda a, o: curve_variant(a, o, tail="total-minus-prefix"),
        "the tail sums went negative and sqrt() returned NaN: you computed sum_{k>=e} as total - prefix, which "
        "loses the exact zero to rounding. Use a reverse scan: np.flip(np.cumsum(np.flip(sq, 1), 1), 1).",
    ),
    Mistake(
        "ignores-order",
        lambda a, o: curve_variant(a, o, sort="none"),
        "you used last_attn in position order; first put each head's values in eviction order: "
        "np.take_along_axis(last_attn, order, axis=1).",
    ),
    Mistake(
        "reversed-order",
        lambda a, o: curve_variant(a, o, sort="reversed"),
        "you evicted the MOST important candidates first: order is least important first, so a_sorted[:, :e] go first.",
    ),
    Mistake(
        "mean-of-ratios",
        lambda a, o: curve_variant(a, o, combine="mean-of-ratios"),
        "you averaged per-head ratios; the rule averages the NORMS over heads first, R(e) = mean_h r_h(e), "
        "then ratio(e) = (R(0) - R(e)) / R(0).",
    ),
    Mistake(
        "retained-not-lost",
        lambda a, o: curve_variant(a, o, lost=False),
        "you returned the share KEPT, R(e) / R(0); the curve is the share LOST, (R(0) - R(e)) / R(0), starting at 0.",
    ),
    Mistake(
        "exclusive-tail",
        lambda a, o: curve_variant(a, o, tail="exclusive"),
        "off by one: after evicting e candidates the kept ones are k >= e (a_sorted[:, e:]), so r_h(0) is the full norm.",
    ),
]


def _cut(a, o, t, *, curve=None, rule="max-le"):
    ratio = ref.halting_curve(a, o) if curve is None else curve(a, o)
    ratio = np.asarray(ratio)
    if rule == "count":
        return int((ratio <= t).sum())
    if rule == "strict":
        ok = np.flatnonzero(ratio < t)
        return int(ok[-1]) if ok.size else 0
    ok = np.flatnonzero(ratio <= t)
    return int(ok[-1]) if ok.size else 0


HALTING_CUT = [
    Mistake(
        "nan-when-silent",
        lambda a, o, t: _cut(a, o, t, curve=lambda a_, o_: curve_variant(a_, o_)),
        "when R(0) == 0 your ratio is 0/0 = NaN and NaN <= threshold is False; the ratio is 0 there, so e* = n - 1.",
    ),
    Mistake(
        "count-not-index",
        lambda a, o, t: _cut(a, o, t, rule="count"),
        "off by one (one too many): e* is the largest e with ratio(e) <= threshold, an index into the curve, which "
        "starts at e = 0; it is neither the number of such e nor the first e where ratio(e) > threshold.",
    ),
    Mistake(
        "strict-less",
        lambda a, o, t: _cut(a, o, t, rule="strict"),
        "use ratio(e) <= threshold (equality allowed), not <.",
    ),
    Mistake(
        "l1-curve",
        lambda a, o, t: _cut(a, o, t, curve=lambda a_, o_: curve_variant(a_, o_, norm="l1")),
        "your cut follows an L1 (plain sum) curve; the rule uses the L2 norm sqrt(sum a^2).",
    ),
]


def _kept(order, e, length, window, *, window_mode="ok", sort=True, end="tail", shift=0):
    order = np.asarray(order, np.int64)
    n = order.shape[1]
    cand = order[:, e + shift :] if end == "tail" else order[:, : n - e]
    if sort:
        cand = np.sort(cand, 1)
    if window_mode == "none":
        return cand
    lo = length - window - (1 if window_mode == "shifted" else 0)
    win = np.arange(lo, lo + window, dtype=np.int64)
    return np.concatenate([cand, np.broadcast_to(win, (order.shape[0], window))], 1)


KEPT_POSITIONS = [
    Mistake(
        "unprotected-window",
        lambda o, e, L, w: _kept(o, e, L, w, window_mode="none"),
        "the window is missing: the last w positions (L - w .. L - 1) are always kept; append them after the candidates.",
    ),
    Mistake(
        "unsorted",
        lambda o, e, L, w: _kept(o, e, L, w, sort=False),
        "kept positions must be ascending (np.sort the surviving candidates) so the cache keeps position order.",
    ),
    Mistake(
        "evicted-the-wrong-end",
        lambda o, e, L, w: _kept(o, e, L, w, end="head"),
        "you kept order[:, :n-e], the LEAST important; order is least important first, so keep order[:, e:].",
    ),
    Mistake(
        "off-by-one",
        lambda o, e, L, w: _kept(o, e, L, w, shift=1),
        "off by one: evict exactly e* candidates, keep order[:, e*:].",
    ),
    Mistake(
        "window-shifted",
        lambda o, e, L, w: _kept(o, e, L, w, window_mode="shifted"),
        "the window is positions L - w .. L - 1 (np.arange(L - w, L)), it ends at the last prompt position.",
    ),
]


def _decide(q, k, t, w, *, expand="repeat"):
    hq, hkv = q.shape[0], k.shape[0]
    g = hq // hkv
    keys = np.tile(k, (g, 1, 1)) if expand == "tile" else np.repeat(k, g, axis=0)
    col, last = ref.window_scores(q, keys, 1.0 / np.sqrt(q.shape[2]), w)
    if expand == "tile":
        order = ref.rank_candidates(col.reshape(g, hkv, -1).sum(0))
        e = ref.halting_cut(last, np.tile(order, (g, 1)), t)
    else:
        order = ref.rank_candidates(col)  # per query head: the official "expand" mode
        e = ref.halting_cut(last, order, t)
    return ref.kept_positions(order, e, k.shape[1], w)


OFFICIAL_SCRIPT_LAYER = [
    Mistake(
        "interleaved-gqa",
        lambda q, k, t, w: _decide(q, k, t, w, expand="tile"),
        "the GQA grouping is interleaved: query head h belongs to KV head h // G (np.repeat, not np.tile).",
    ),
    Mistake(
        "expand-mode",
        lambda q, k, t, w: _decide(q, k, t, w),
        "you decided per QUERY head (the official 'expand' mode); in 'group' mode sum each KV head's G query-head "
        "scores first so the kept sets are per KV head: (Hkv, n_kept).",
    ),
]
