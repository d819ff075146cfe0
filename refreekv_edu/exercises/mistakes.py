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


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
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
        return _softmax(logits, axis)
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


def _curve(last_attn, order, *, norm="l2", tail="scan", sort="order", combine="ratio-of-means", lost=True):
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
        lambda a, o: _curve(a, o),
        "when R(0) == 0 (no attention on any candidate) return zeros instead of dividing 0 by 0.",
    ),
    Mistake(
        "l1-norm",
        lambda a, o: _curve(a, o, norm="l1"),
        "you used the L1 norm (a plain sum of attention); the rule uses the L2 norm: r_h(e) = sqrt(sum of a^2 over the kept).",
    ),
    Mistake(
        "no-sqrt",
        lambda a, o: _curve(a, o, norm="squared"),
        "r_h(e) is the square ROOT of the sum of squares; you compared the squared norms.",
    ),
    Mistake(
        "total-minus-prefix",
        lambda a, o: _curve(a, o, tail="total-minus-prefix"),
        "the tail sums went negative and sqrt() returned NaN: you computed sum_{k>=e} as total - prefix, which "
        "loses the exact zero to rounding. Use a reverse scan: np.flip(np.cumsum(np.flip(sq, 1), 1), 1).",
    ),
    Mistake(
        "ignores-order",
        lambda a, o: _curve(a, o, sort="none"),
        "you used last_attn in position order; first put each head's values in eviction order: "
        "np.take_along_axis(last_attn, order, axis=1).",
    ),
    Mistake(
        "reversed-order",
        lambda a, o: _curve(a, o, sort="reversed"),
        "you evicted the MOST important candidates first: order is least important first, so a_sorted[:, :e] go first.",
    ),
    Mistake(
        "mean-of-ratios",
        lambda a, o: _curve(a, o, combine="mean-of-ratios"),
        "you averaged per-head ratios; the rule averages the NORMS over heads first, R(e) = mean_h r_h(e), "
        "then ratio(e) = (R(0) - R(e)) / R(0).",
    ),
    Mistake(
        "retained-not-lost",
        lambda a, o: _curve(a, o, lost=False),
        "you returned the share KEPT, R(e) / R(0); the curve is the share LOST, (R(0) - R(e)) / R(0), starting at 0.",
    ),
    Mistake(
        "exclusive-tail",
        lambda a, o: _curve(a, o, tail="exclusive"),
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
        lambda a, o, t: _cut(a, o, t, curve=lambda a_, o_: _curve(a_, o_)),
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
        lambda a, o, t: _cut(a, o, t, curve=lambda a_, o_: _curve(a_, o_, norm="l1")),
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


# --------------------------------------------------------------------------------------------- the paper's method
def _ids(a):
    return np.broadcast_to(np.arange(a.shape[1], dtype=np.int64), a.shape)


def _paper_curve(
    last_row, m, *, sinks="out", slice_shift=0, newest_first=False, renormalise=False, rank=False, **curve
):
    """The candidates' curve with one thing done wrong (``sinks``: "out" (right), "in-norm", "candidates")."""
    row = np.asarray(last_row, np.float32)
    if sinks == "candidates":
        a, kept = row, None
    else:
        a, kept = row[:, m + slice_shift :], row[:, :m]
    if renormalise:
        with np.errstate(invalid="ignore", divide="ignore"):
            a = a / a.sum(axis=1, keepdims=True)
    order = np.argsort(a, axis=1, kind="stable") if rank else _ids(a)
    if newest_first:
        order = order[:, ::-1]
    if sinks == "in-norm" and m:  # the sinks sit at the end of the order: counted in every tail, never evicted
        a_sorted = np.concatenate([np.take_along_axis(a, order, 1), kept], axis=1)
        full = _curve(a_sorted, _ids(a_sorted), **curve) if curve else ref.halting_curve(a_sorted, _ids(a_sorted))
        return full[: a.shape[1]]
    return _curve(a, order, **curve) if curve else ref.halting_curve(a, order)


CANDIDATE_CURVE = [
    Mistake(
        "sinks-in-norm",
        lambda r, m: _paper_curve(r, m, sinks="in-norm"),
        'you counted the sinks in the norm (Algorithm 1 read literally, the "sinks-in-metric" ablation): the sinks are '
        "kept but left OUT of the metric, so take the norm over the candidates last_row[:, m:] only.",
    ),
    Mistake(
        "sinks-as-candidates",
        lambda r, m: _paper_curve(r, m, sinks="candidates"),
        "your curve has one entry per POSITION: the sinks [0, m) are not candidates (never evicted); the curve has "
        "n = L - m entries, one per candidate.",
    ),
    Mistake(
        "sink-slice-off-by-one",
        lambda r, m: _paper_curve(r, m, slice_shift=1),
        "off by one in the slice: the sinks are positions 0 .. m-1, so the candidates start at last_row[:, m:].",
    ),
    Mistake(
        "sink-slice-one-short",
        lambda r, m: _paper_curve(r, m, slice_shift=-1 if m else 0),
        "off by one in the slice: last_row[:, m - 1:] still holds the last sink; the candidates start at "
        "last_row[:, m:].",
    ),
    Mistake(
        "newest-evicted-first",
        lambda r, m: _paper_curve(r, m, newest_first=True),
        "you evicted the NEWEST candidates first: the paper evicts oldest first (candidate k is position m + k, and "
        "k = 0 goes first), so the curve reads the candidates in position order.",
    ),
    Mistake(
        "ranked-by-attention",
        lambda r, m: _paper_curve(r, m, rank=True),
        "you sorted the candidates by attention (the official script's idea); the paper's ranking is recency: the "
        "order is simply 0, 1, ..., n-1 (oldest first), the same for every head.",
    ),
    Mistake(
        "renormalised",
        lambda r, m: _paper_curve(r, m, renormalise=True),
        "you renormalised each head's candidate attention to sum 1; use the attention as it is (softmax over all L "
        "keys), so a head that spends most of its attention on the sinks weighs less in the mean R(e).",
    ),
    Mistake(
        "l1-norm",
        lambda r, m: _paper_curve(r, m, norm="l1"),
        "you used the L1 norm (a plain sum of attention); the rule uses the L2 norm sqrt(sum of a^2).",
    ),
    Mistake(
        "mean-of-ratios",
        lambda r, m: _paper_curve(r, m, combine="mean-of-ratios"),
        "you averaged per-head ratios; average the NORMS over heads first, R(e) = mean_h r_h(e), then take the ratio.",
    ),
]


def _keep(
    last_row, m, t, *, curve=None, rule="max-le", sinks_kept=True, positions=True, newest_first=False, sinks="out"
):
    length = np.asarray(last_row).shape[1]
    m = min(m, length)
    ratio = np.asarray(
        curve(last_row, m) if curve is not None else _paper_curve(last_row, m, newest_first=newest_first, sinks=sinks)
    )
    if rule == "count":
        e = int((ratio <= t).sum())
    else:
        ok = np.flatnonzero(ratio < t if rule == "strict" else ratio <= t)
        e = int(ok[-1]) if ok.size else 0
    if sinks == "candidates":  # the sinks were evicted first, like any candidate
        return np.arange(e, length, dtype=np.int64)
    n = length - m
    cand = np.arange(m, m + n - e) if newest_first else np.arange(m + e, length)
    if not positions:
        cand = cand - m
    head = np.arange(m) if sinks_kept else np.zeros(0, np.int64)
    return np.concatenate([head, cand]).astype(np.int64)


RECENCY_KEEP = [
    Mistake(
        "strict-less",
        lambda r, m, t: _keep(r, m, t, rule="strict"),
        "use ratio(e) <= threshold (equality allowed), not <: evicting zero-attention candidates loses exactly 0.",
    ),
    Mistake(
        "cut-off-by-one",
        lambda r, m, t: _keep(r, m, t, rule="count"),
        "off by one (one candidate too many evicted): e* is the LAST e with ratio(e) <= T, an index that starts at "
        "e = 0; it is neither the number of such e nor the first e that exceeds T.",
    ),
    Mistake(
        "newest-evicted-first",
        lambda r, m, t: _keep(r, m, t, newest_first=True),
        "you evicted the NEWEST candidates: the paper evicts oldest first and keeps the sinks plus [m + e*, L).",
    ),
    Mistake(
        "sinks-dropped",
        lambda r, m, t: _keep(r, m, t, sinks_kept=False),
        "the sinks are missing: positions 0 .. m-1 are always kept; put np.arange(m) before the kept candidates.",
    ),
    Mistake(
        "sinks-in-norm",
        lambda r, m, t: _keep(r, m, t, sinks="in-norm"),
        "you counted the sinks in the norm: the sinks are kept but out of the metric, so the curve is computed on "
        "last_row[:, m:] only (with them, the candidates look negligible and far too many go).",
    ),
    Mistake(
        "sinks-as-candidates",
        lambda r, m, t: _keep(r, m, t, sinks="candidates"),
        "the sinks were treated as candidates and evicted first; they are never candidates: the curve covers "
        "last_row[:, m:], and the kept set always starts with 0 .. m-1.",
    ),
    Mistake(
        "indices-not-positions",
        lambda r, m, t: _keep(r, m, t, positions=False),
        "you returned candidate INDICES (0 .. n-1); candidate k is prompt position m + k: keep np.arange(m + e*, L).",
    ),
]


def _budgets(rows, m, t, full, *, honour_full=True, shift=0, full_value=1.0, mean="all", count="share"):
    rows = np.asarray(rows, np.float32)
    length = rows.shape[2]
    budgets = np.empty(rows.shape[0], np.float64)
    is_full = np.array([honour_full and (layer + shift) in full for layer in range(rows.shape[0])], bool)
    for layer, row in enumerate(rows):
        if is_full[layer]:
            budgets[layer] = full_value if count != "kept" else length
            continue
        kept = len(ref.recency_keep(row, m, t))
        n, e = length - m, m + (length - m) - kept
        budgets[layer] = {
            "share": kept / length,
            "no-sinks": (kept - m) / length,
            "over-candidates": (n - e) / n,
            "kept": kept,
        }[count]
    pruned = budgets[~is_full]
    avg = float(pruned.mean()) if mean == "pruned" and pruned.size else float(budgets.mean())
    return budgets, avg


MODEL_BUDGET = [
    Mistake(
        "layer-0-pruned",
        lambda r, m, t, f: _budgets(r, m, t, f, honour_full=False),
        "layers 0 and 1 were pruned: a layer in full_layers keeps its whole cache (the paper's Appendix B: pruning "
        "them breaks the model), so its budget is 1.0.",
    ),
    Mistake(
        "full-layers-left-out-of-mean",
        lambda r, m, t, f: _budgets(r, m, t, f, mean="pruned"),
        "your mean skips the full layers; they hold their whole cache, so they count 100% in the model's mean "
        "budget: average over ALL layers.",
    ),
    Mistake(
        "full-layers-count-zero",
        lambda r, m, t, f: _budgets(r, m, t, f, full_value=0.0),
        "a full layer is not 'skipped' (0%): it keeps everything, budget 1.0.",
    ),
    Mistake(
        "full-layers-one-based",
        lambda r, m, t, f: _budgets(r, m, t, f, shift=1),
        "layer indices start at 0: full_layers = (0, 1) are the first two layers (test `layer in full_layers` with "
        "layer = 0, 1, 2, ...).",
    ),
    Mistake(
        "sinks-not-counted",
        lambda r, m, t, f: _budgets(r, m, t, f, count="no-sinks"),
        "the sinks are kept, so they count in the budget: (m + n - e*) / L.",
    ),
    Mistake(
        "budget-over-candidates",
        lambda r, m, t, f: _budgets(r, m, t, f, count="over-candidates"),
        "the budget is a share of the whole PROMPT, (m + n - e*) / L, not of the n candidates.",
    ),
    Mistake(
        "count-not-share",
        lambda r, m, t, f: _budgets(r, m, t, f, count="kept"),
        "return the SHARE of the prompt each layer keeps (kept / L, between 0 and 1), not the number of rows.",
    ),
]


def _decide_paper(
    q,
    k,
    t,
    m,
    layer,
    *,
    full=True,
    gqa="repeat",
    row=-1,
    use_scale=True,
    newest_first=False,
    sinks="out",
    owners="kv",
    sinks_kept=True,
):
    hkv, length, dim = k.shape
    if full and layer in ref.PAPER_FULL_LAYERS:
        kept = np.arange(length, dtype=np.int64)
    else:
        g = q.shape[0] // hkv
        keys = np.tile(k, (g, 1, 1)) if gqa == "tile" else np.repeat(k, g, axis=0)
        logits = (1.0 / np.sqrt(dim) if use_scale else 1.0) * np.einsum("hd,hld->hl", q[:, row, :], keys)
        last_row = _softmax(logits.astype(np.float64)).astype(np.float32)
        kept = _keep(last_row, m, t, newest_first=newest_first, sinks=sinks, sinks_kept=sinks_kept)
    heads = q.shape[0] if owners == "query" else hkv
    return np.broadcast_to(kept, (heads, kept.size)).copy()


DECIDE_LAYER = [
    Mistake(
        "layer-0-pruned",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, full=False),
        "layers 0 and 1 are full layers in the paper (Appendix B): return every position 0 .. L-1 for them, "
        "without computing anything.",
    ),
    Mistake(
        "sinks-in-norm",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, sinks="in-norm"),
        "you counted the sinks in the norm: they are kept but out of the metric, so the curve uses last_row[:, m:].",
    ),
    Mistake(
        "sinks-dropped",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, sinks_kept=False),
        "the sinks are missing: positions 0 .. m-1 are always kept.",
    ),
    Mistake(
        "newest-evicted-first",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, newest_first=True),
        "you evicted the NEWEST candidates: recency evicts oldest first, keeping the sinks plus [m + e*, L).",
    ),
    Mistake(
        "interleaved-gqa",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, gqa="tile"),
        "the GQA grouping is interleaved: query head h reads KV head h // G (np.repeat, not np.tile).",
    ),
    Mistake(
        "no-scale",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, use_scale=False),
        "multiply q K^T by the attention scale 1/sqrt(D) before the softmax.",
    ),
    Mistake(
        "first-query-row",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, row=0),
        "the signal is the attention of the LAST prompt position: queries[:, -1], not queries[:, 0].",
    ),
    Mistake(
        "per-query-head",
        lambda q, k, t, m, i: _decide_paper(q, k, t, m, i, owners="query"),
        "return one kept set per KV head, shape (Hkv, n_kept): with GQA, Hq query heads share Hkv KV heads, and the "
        "cache is stored per KV head.",
    ),
]
