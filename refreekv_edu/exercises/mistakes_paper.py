"""Typical wrong answers for the paper's method (sinks out of the metric, recency keep, model budget, the layer
decision), written out, each with the hint a student needs; see :mod:`refreekv_edu.exercises.mistakes` for how
the grader uses them. The official script's pieces are in :mod:`~refreekv_edu.exercises.mistakes`.
"""

from __future__ import annotations

import numpy as np

from . import solutions as ref
from .grading import Mistake
from .mistakes import curve_variant, softmax


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
        full = (
            curve_variant(a_sorted, _ids(a_sorted), **curve) if curve else ref.halting_curve(a_sorted, _ids(a_sorted))
        )
        return full[: a.shape[1]]
    return curve_variant(a, order, **curve) if curve else ref.halting_curve(a, order)


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
        last_row = softmax(logits.astype(np.float64)).astype(np.float32)
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
