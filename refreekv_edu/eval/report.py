"""From per-sample records to summaries, markdown tables, plots and ``docs/results.md``.

Summaries are per (task, length, method): mean and worst task score, the share of samples on which the
method *keeps full-cache performance* (its score is at least the full cache's on that sample), the
fidelity metrics (token agreement, exact match with the full-cache output, first-token KL) and the KV
memory kept. matplotlib is imported only when plotting.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..policies import PRESETS

#: Score differences below this count as "kept full-cache performance" (float noise in ROUGE/F1).
KEEP_TOLERANCE = 1e-9


@dataclass
class SummaryRow:
    """One (task, length, method) line of the summary table."""

    task: str
    length: int
    method: str
    n: int
    score_mean: float
    score_worst: float
    full_score_mean: float
    keeps_full: float  # share of samples with score >= the full cache's score on the same sample
    token_agreement: float
    exact_match_full: float
    first_token_kl: float | None
    kv_kept: float  # mean share of KV bytes kept
    needle_kept: float | None  # share of (layer, head) kept sets still holding the needle (needle tasks)
    mean_budget: float  # mean share of prompt rows kept (average over layers)
    prefill_s: float
    decide_s: float
    decode_s: float
    prompt_tokens: float
    #: 95% bootstrap intervals (percentile, over samples) of every mean and rate, keyed by the field name:
    #: ``score_mean``, ``keeps_full``, ``exact_match_full``, ``token_agreement``, ``first_token_kl``, ``kv_kept``,
    #: ``mean_budget``, ``needle_kept``, ``prefill_s``, ``decide_s``, ``decode_s``.
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` ``(n,)`` (deterministic for a seed; NaN for no values).

    Example:
        >>> bootstrap_interval([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def _method_order(methods: Iterable[str]) -> list[str]:
    def key(m: str) -> tuple[int, str]:
        if m == "full":
            return (0, m)
        if m.split("@")[0] in PRESETS:
            return (1 if m.split("@")[0] == "paper" else 2, m)
        if m.endswith("@matched"):
            return (3, m)
        if m.endswith("@oracle"):
            return (4, m)
        return (5, m)

    return sorted(set(methods), key=key)


def summarize(records: Sequence[dict[str, Any]]) -> list[SummaryRow]:
    """Aggregate records into :class:`SummaryRow` s, ordered by task, length, then method (full, refreekv, matched, fixed)."""
    full_score = {r["sample_id"]: r["score"] for r in records if r["method"] == "full"}
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["task"], int(r.get("length") or 0), r["method"])].append(r)
    rows = []
    tasks = sorted({(t, n) for t, n, _ in groups})
    for task, length in tasks:
        for method in _method_order(m for t, n, m in groups if (t, n) == (task, length)):
            rs = groups[(task, length, method)]
            scores = np.array([r["score"] for r in rs], dtype=float)
            fulls = np.array([full_score.get(r["sample_id"], np.nan) for r in rs], dtype=float)
            kls = [r["first_token_kl"] for r in rs if r.get("first_token_kl") is not None]
            kept_full = (scores >= fulls - KEEP_TOLERANCE).astype(float) if np.isfinite(fulls).all() else np.array([np.nan])
            intervals = {
                "score_mean": bootstrap_interval(scores),
                "keeps_full": bootstrap_interval(kept_full),
                "exact_match_full": bootstrap_interval([r["exact_match_full"] for r in rs]),
                "token_agreement": bootstrap_interval([r["token_agreement"] for r in rs]),
                "kv_kept": bootstrap_interval([r["kv_kept"] for r in rs]),
                "first_token_kl": bootstrap_interval(kls),
                "mean_budget": bootstrap_interval([r["mean_budget"] for r in rs]),
                "needle_kept": bootstrap_interval([r.get("needle_kept") for r in rs]),
                **{k: bootstrap_interval([r.get(k, 0.0) for r in rs]) for k in ("prefill_s", "decide_s", "decode_s")},
            }
            needles = [r["needle_kept"] for r in rs if r.get("needle_kept") is not None]
            rows.append(SummaryRow(
                task=task,
                length=length,
                method=method,
                n=len(rs),
                score_mean=float(scores.mean()),
                score_worst=float(scores.min()),
                full_score_mean=float(np.nanmean(fulls)) if np.isfinite(fulls).any() else float("nan"),
                keeps_full=float(np.mean(scores >= fulls - KEEP_TOLERANCE)) if np.isfinite(fulls).all() else float("nan"),
                token_agreement=float(np.mean([r["token_agreement"] for r in rs])),
                exact_match_full=float(np.mean([r["exact_match_full"] for r in rs])),
                first_token_kl=float(np.mean(kls)) if kls else None,
                kv_kept=float(np.mean([r["kv_kept"] for r in rs])),
                needle_kept=float(np.mean(needles)) if needles else None,
                mean_budget=float(np.mean([r["mean_budget"] for r in rs])),
                prefill_s=float(np.mean([r.get("prefill_s", 0.0) for r in rs])),
                decide_s=float(np.mean([r.get("decide_s", 0.0) for r in rs])),
                decode_s=float(np.mean([r.get("decode_s", 0.0) for r in rs])),
                prompt_tokens=float(np.mean([r.get("prompt_tokens", 0) for r in rs])),
                intervals=intervals,
            ))
    return rows


def _fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return format(x, spec)


def _ci(row: SummaryRow, name: str, value: float | None, spec: str = ".2f", scale: float = 1.0, unit: str = "") -> str:
    """``value [lo, hi]`` with the row's 95% interval of ``name`` (``-`` for a missing value)."""
    if value is None or not np.isfinite(value):
        return "-"
    lo, hi = row.intervals.get(name, (float("nan"), float("nan")))
    cell = f"{_fmt(scale * value, spec)}{unit}"
    if np.isfinite(lo) and np.isfinite(hi):
        cell += f" [{_fmt(scale * lo, spec)}, {_fmt(scale * hi, spec)}]"
    return cell


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    """Quality and memory per task x length x method; every mean and rate with its 95% bootstrap interval."""
    head = ("| task | L (tok) | method | n | score mean | score worst | keeps full | exact = full | token agree "
            "| KL 1st tok | KV kept | needle kept |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.prompt_tokens:.0f} | {r.method} | {r.n} | {_ci(r, 'score_mean', r.score_mean)} | {_fmt(r.score_worst, '.2f')} "
            f"| {_ci(r, 'keeps_full', r.keeps_full, '.0f', 100, '%')} | {_ci(r, 'exact_match_full', r.exact_match_full, '.0f', 100, '%')} "
            f"| {_ci(r, 'token_agreement', r.token_agreement)} | {_ci(r, 'first_token_kl', r.first_token_kl, '.3f')} "
            f"| {_ci(r, 'kv_kept', r.kv_kept, '.1f', 100, '%')} | {_ci(r, 'needle_kept', r.needle_kept)} |"
        )
    return "\n".join(lines)


def timing_table(rows: Sequence[SummaryRow]) -> str:
    """Seconds per record (prefill, decide + compaction, decode), means with 95% bootstrap intervals."""
    lines = ["| task | L (tok) | method | n | prefill s | decide s | decode s |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r.task} | {r.prompt_tokens:.0f} | {r.method} | {r.n} | {_ci(r, 'prefill_s', r.prefill_s)} "
                     f"| {_ci(r, 'decide_s', r.decide_s, '.3f')} | {_ci(r, 'decode_s', r.decode_s)} |")
    return "\n".join(lines)


def task_label(task: str, length: int) -> str:
    """``"<task> @<length>"``, e.g. ``"passkey @1024"``; just ``task`` when ``length`` is 0 (no target length)."""
    return f"{task} @{length}" if length else task


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None or not np.isfinite(x) else f"{format(100 * x, spec)}%"


def _pct_ci(x: float, ci: tuple[float, float], spec: str = ".0f") -> str:
    return f"{_pct(x, spec)} [{_pct(ci[0], spec)}, {_pct(ci[1], spec)}]"


def _by_sample(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        out[r["sample_id"]][r["method"]] = r
    return out


def _keeps(rec: dict[str, Any], full: dict[str, Any]) -> float:
    return float(rec["score"] >= full["score"] - KEEP_TOLERANCE)


@dataclass
class PairedComparison:
    """The paper preset against one baseline on the samples where both (and the full cache) ran.

    ``*_keeps`` are the shares of samples whose task score is at least the full cache's, ``*_exact`` the shares
    whose greedy output equals it; ``diff_*`` = paper minus baseline, with a paired 95% bootstrap interval;
    ``only_paper`` / ``only_baseline``: samples where only that one kept the full cache's score.
    """

    baseline: str
    group: str
    n: int
    paper_keeps: float
    base_keeps: float
    diff_keeps: float
    diff_keeps_ci: tuple[float, float]
    paper_exact: float
    base_exact: float
    diff_exact: float
    diff_exact_ci: tuple[float, float]
    only_paper: int
    only_baseline: int
    paper_budget: float
    base_budget: float


def paired_comparisons(records: Sequence[dict[str, Any]], baseline: str, paper: str = "paper") -> list[PairedComparison]:
    """:class:`PairedComparison` of ``paper`` vs ``baseline`` per task/length group and over all samples ("all")."""
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for methods in _by_sample(records).values():
        if {"full", paper, baseline} <= set(methods):
            p, b, f = methods[paper], methods[baseline], methods["full"]
            groups[task_label(p["task"], int(p.get("length") or 0))].append((p, b, f))
            groups["all"].append((p, b, f))
    out = []
    for group in sorted(groups, key=lambda g: (g == "all", g)):
        triples = groups[group]
        pk = np.array([_keeps(p, f) for p, _, f in triples])
        bk = np.array([_keeps(b, f) for _, b, f in triples])
        pe = np.array([float(p["exact_match_full"]) for p, _, _ in triples])
        be = np.array([float(b["exact_match_full"]) for _, b, _ in triples])
        out.append(PairedComparison(
            baseline=baseline, group=group, n=len(triples), paper_keeps=float(pk.mean()), base_keeps=float(bk.mean()),
            diff_keeps=float((pk - bk).mean()), diff_keeps_ci=bootstrap_interval(pk - bk),
            paper_exact=float(pe.mean()), base_exact=float(be.mean()), diff_exact=float((pe - be).mean()),
            diff_exact_ci=bootstrap_interval(pe - be), only_paper=int(((pk == 1) & (bk == 0)).sum()),
            only_baseline=int(((pk == 0) & (bk == 1)).sum()),
            paper_budget=float(np.mean([p["mean_budget"] for p, _, _ in triples])),
            base_budget=float(np.mean([b["mean_budget"] for _, b, _ in triples])),
        ))
    return out


def _verdict(diff: float, ci: tuple[float, float]) -> str:
    if ci[0] > 0:
        return "the paper preset is better (the interval excludes 0)"
    if ci[1] < 0:
        return "the fixed budget is better (the interval excludes 0)"
    return "no difference this sample size can detect (the interval includes 0)"


@dataclass
class OracleComparison:
    """The paper preset's chosen budget against the oracle budget (``<ranking>@oracle``), per group.

    ``gap`` = paper's mean budget minus the oracle's (share of the prompt's rows kept, averaged over layers; > 0:
    the paper keeps more than the input needed), with a 95% bootstrap interval. The oracle is known only to the
    search's resolution: the paper's budget, spread uniformly over the pruned layers, is *above* the oracle when it
    exceeds the smallest reproducing probe, *below* when it is under the largest failing probe, *inside* otherwise.
    ``below_but_same``: samples where the paper kept less than the oracle and still reproduced the full cache's
    output (its per-layer budgets did better than any uniform budget that small).
    """

    oracle: str
    group: str
    n: int
    gap: float
    gap_ci: tuple[float, float]
    above: float
    below: float
    inside: float
    paper_budget: float
    oracle_budget: float
    paper_exact: float
    below_but_same: int
    gap_when_same: float | None


def oracle_comparisons(records: Sequence[dict[str, Any]], oracle: str, paper: str = "paper") -> list[OracleComparison]:
    """:class:`OracleComparison` per task/length group and over all samples ("all")."""
    from .methods import matched_budget

    rows: dict[str, list[tuple[float, str, float, float, float]]] = defaultdict(list)
    for methods in _by_sample(records).values():
        if not {paper, oracle} <= set(methods):
            continue
        p, o = methods[paper], methods[oracle]
        layers = p.get("layer_budgets") or []
        per_layer = matched_budget(p["mean_budget"], len(layers), len(p.get("full_layers", []))) if layers else 1.0
        probes = o.get("oracle_probes") or []
        hi = float(o.get("budget_target") or 1.0)
        lo = max([b for b, same in probes if not same], default=0.0)
        where = "above" if per_layer > hi + 1e-9 else ("below" if per_layer < lo - 1e-9 else "inside")
        row = (p["mean_budget"] - o["mean_budget"], where, p["mean_budget"], o["mean_budget"], float(p["exact_match_full"]))
        rows[task_label(p["task"], int(p.get("length") or 0))].append(row)
        rows["all"].append(row)
    out = []
    for group in sorted(rows, key=lambda g: (g == "all", g)):
        rs = rows[group]
        gaps = np.array([r[0] for r in rs])
        same = [r for r in rs if r[4] == 1.0]
        out.append(OracleComparison(
            oracle=oracle, group=group, n=len(rs), gap=float(gaps.mean()), gap_ci=bootstrap_interval(gaps),
            above=float(np.mean([r[1] == "above" for r in rs])), below=float(np.mean([r[1] == "below" for r in rs])),
            inside=float(np.mean([r[1] == "inside" for r in rs])), paper_budget=float(np.mean([r[2] for r in rs])),
            oracle_budget=float(np.mean([r[3] for r in rs])), paper_exact=float(np.mean([r[4] for r in rs])),
            below_but_same=sum(r[1] == "below" and r[4] == 1.0 for r in rs),
            gap_when_same=float(np.mean([r[0] for r in same])) if same else None,
        ))
    return out


def findings(rows: Sequence[SummaryRow], records: Sequence[dict[str, Any]] | None = None,
             speed: dict[str, Any] | None = None) -> list[str]:
    """Plain statements computed from the summary (and, when given, the records and the speed step): where the
    paper's claim held and where it failed. No hand-written claims: every number and verdict comes from the data."""
    out: list[str] = []
    by_task: dict[tuple[str, int], dict[str, SummaryRow]] = defaultdict(dict)
    for r in rows:
        by_task[(r.task, r.length)][r.method] = r
    papers = {k: m["paper"] for k, m in by_task.items() if "paper" in m}
    if papers:
        held = [task_label(*k) for k, r in papers.items() if r.keeps_full >= 1.0]
        failed = [(task_label(*k), r) for k, r in papers.items() if r.keeps_full < 1.0]
        kv = float(np.mean([r.kv_kept for r in papers.values()]))
        out.append(f"**Full-cache performance** (the paper preset's task score at least the full cache's on every sample) "
                   f"held in {len(held)} of {len(papers)} task/length groups"
                   + (f" ({', '.join(held)})" if held else "") + f", keeping {_fmt(100 * kv, '.1f')}% of the KV bytes on "
                   "average over the groups. The full cache's own mean score, the bar it is held to: "
                   + ", ".join(f"{task_label(*k)} {_fmt(r.full_score_mean, '.2f')}" for k, r in sorted(papers.items())) + ".")
        for label, r in sorted(failed, key=lambda x: x[1].keeps_full):
            lost = round(r.n * (1 - r.keeps_full))
            out.append(f"**Failed on {label}**: the paper preset lost the full cache's score on {lost} of {r.n} samples "
                       f"(keeps full {_ci(r, 'keeps_full', r.keeps_full, '.0f', 100, '%')}; score {_fmt(r.score_mean, '.2f')} vs "
                       f"full {_fmt(r.full_score_mean, '.2f')}), with {_fmt(100 * r.kv_kept, '.1f')}% of the KV bytes; output "
                       f"identical to the full cache's on {_ci(r, 'exact_match_full', r.exact_match_full, '.0f', 100, '%')}.")
        budgets = sorted(((r.mean_budget, task_label(*k)) for k, r in papers.items()))
        if len(budgets) > 1:
            out.append(f"**Adaptive budget**: the paper preset's mean budget ranged from {_fmt(100 * budgets[0][0], '.1f')}% "
                       f"({budgets[0][1]}) to {_fmt(100 * budgets[-1][0], '.1f')}% ({budgets[-1][1]}) across task groups "
                       f"(one threshold, T = {PRESETS['paper']['threshold']:g}).")
    if records:
        all_paper = [r for r in records if r["method"] == "paper"]
        if all_paper:
            b = np.array([r["mean_budget"] for r in all_paper])
            exact = np.array([r["exact_match_full"] for r in all_paper], dtype=float)
            out.append(f"Over all {len(all_paper)} samples the paper preset's budget per sample spans "
                       f"{_fmt(100 * b.min(), '.1f')}%-{_fmt(100 * b.max(), '.1f')}% (mean {_fmt(100 * b.mean(), '.1f')}%); "
                       f"its greedy output equals the full cache's on {_pct_ci(exact.mean(), bootstrap_interval(exact))} of them.")
        baselines = sorted({r["method"] for r in records if r["method"].endswith(("@matched", "@matched-set"))})
        for base in baselines:
            comps = {c.group: c for c in paired_comparisons(records, base)}
            c = comps.get("all")
            if c is None:
                continue
            kind = "one budget for the whole set" if base.endswith("@matched-set") else "the same budget per sample"
            line = (f"**Fixed budget at the same mean, {base}** ({kind}; mean budget {_fmt(100 * c.base_budget, '.1f')}% vs the "
                    f"paper's {_fmt(100 * c.paper_budget, '.1f')}%): keeps the full score on {_pct(c.base_keeps)} of {c.n} samples "
                    f"vs the paper's {_pct(c.paper_keeps)}; paired difference (paper minus fixed) "
                    f"{_fmt(100 * c.diff_keeps, '+.0f')} points [{_fmt(100 * c.diff_keeps_ci[0], '+.0f')}, "
                    f"{_fmt(100 * c.diff_keeps_ci[1], '+.0f')}]: {_verdict(c.diff_keeps, c.diff_keeps_ci)}. "
                    f"Only the paper kept it on {_n(c.only_paper, 'sample')}, only the fixed budget on {_n(c.only_baseline, 'sample')}. "
                    f"Identical output: {_pct(c.paper_exact)} vs {_pct(c.base_exact)} (difference "
                    f"{_fmt(100 * c.diff_exact, '+.0f')} points [{_fmt(100 * c.diff_exact_ci[0], '+.0f')}, "
                    f"{_fmt(100 * c.diff_exact_ci[1], '+.0f')}]).")
            worse = [g for g, x in comps.items() if g != "all" and x.diff_keeps_ci[1] < 0]
            better = [g for g, x in comps.items() if g != "all" and x.diff_keeps_ci[0] > 0]
            if better:
                line += f" The paper is better in: {', '.join(better)}."
            if worse:
                line += f" The fixed budget is better in: {', '.join(worse)}."
            out.append(line)
        oracles = sorted({r["method"] for r in records if r["method"].endswith("@oracle")})
        for name in oracles:
            comps = {c.group: c for c in oracle_comparisons(records, name)}
            c = comps.get("all")
            if c is None:
                continue
            out.append(f"**Oracle budget ({name})**: the paper's chosen budget sits above the smallest uniform fixed budget "
                       f"that reproduces the full cache's output on {_pct(c.above)} of {c.n} samples, below it on "
                       f"{_pct(c.below)}, within the search's resolution on {_pct(c.inside)}; mean gap "
                       f"{_fmt(100 * c.gap, '+.1f')} points of budget [{_fmt(100 * c.gap_ci[0], '+.1f')}, "
                       f"{_fmt(100 * c.gap_ci[1], '+.1f')}] (paper {_fmt(100 * c.paper_budget, '.1f')}%, oracle "
                       f"{_fmt(100 * c.oracle_budget, '.1f')}%). On {_n(c.below_but_same, 'sample')} the paper kept less than the "
                       "oracle and still reproduced the output."
                       + "".join(f" It keeps {word} than the input needed in: " + ", ".join(
                           f"{g} ({_fmt(100 * x.gap, '+.1f')} [{_fmt(100 * x.gap_ci[0], '+.1f')}, {_fmt(100 * x.gap_ci[1], '+.1f')}])"
                           for g, x in comps.items() if g != "all" and test(x)) + "."
                           for word, test in (("more", lambda x: x.gap_ci[0] > 0), ("less", lambda x: x.gap_ci[1] < 0))
                           if any(g != "all" and test(x) for g, x in comps.items())))
        pts = sweep_points(records).get("paper")
        if pts and len(pts) > 1:
            (t0, b0, e0), (t1, b1, e1) = pts[0], pts[-1]
            best = max(pts, key=lambda p: (p[2], -p[1]))
            out.append(f"**Threshold sweep (paper preset)**: from T = {100 * t0:g}% to T = {100 * t1:g}% the mean budget goes "
                       f"from {_fmt(100 * b0, '.1f')}% to {_fmt(100 * b1, '.1f')}% and identical outputs from {_pct(e0)} to "
                       f"{_pct(e1)}; the highest fidelity, {_pct(best[2])}, comes at T = {100 * best[0]:g}% "
                       f"(budget {_fmt(100 * best[1], '.1f')}%)"
                       + ("; no threshold reproduced the full cache on every sample." if best[2] < 1.0 else "."))
    if speed and speed.get("decode_speed_ratio"):
        ratio = speed["decode_speed_ratio"]
        out.append(f"**Decode speed**: {speed_line(speed)} ({'faster' if ratio > 1 else 'not faster'} than the full cache"
                   f"{'' if speed.get('same_tokens') is None else '; same greedy tokens' if speed.get('same_tokens') else '; different greedy tokens'}).")
    return out


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works headless
    import matplotlib.pyplot as plt

    return plt


def plot_score_vs_budget(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per task (and length): mean score against mean KV kept, a line per fixed ranking, ReFreeKV as a star."""
    plt = _pyplot()
    rows = summarize(records)
    groups = sorted({(r.task, r.length) for r in rows})
    cols = min(3, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.5, 4.2 * cols), 3.3 * nrows + 0.8), squeeze=False)
    colors = {"h2o": "tab:blue", "snapkv": "tab:orange", "recency": "tab:green"}
    for ax, (task, length) in zip(axes.flat, groups):
        mine = [r for r in rows if (r.task, r.length) == (task, length)]
        for ranking, color in colors.items():
            pts = sorted((100 * r.kv_kept, r.score_mean) for r in mine
                         if r.method.startswith(ranking + "@") and r.method.split("@")[1][:1].isdigit())
            if pts:  # numeric fixed budgets only; matched/oracle get their own markers
                ax.plot(*zip(*pts), "o-", color=color, label=f"fixed {ranking}", alpha=0.8)
            marks = {"matched": ("s", "at the paper's budget (per sample)"), "matched-set": ("^", "at the paper's mean over the set"),
                     "oracle": ("x", "oracle budget")}
            for r in mine:
                suffix = r.method.split("@")[1] if r.method.startswith(ranking + "@") else ""
                if suffix in marks:
                    ax.plot(100 * r.kv_kept, r.score_mean, marks[suffix][0], color=color, markersize=9,
                            markerfacecolor="none", label=f"{ranking} {marks[suffix][1]}")
        for r in mine:
            if r.method.split("@")[0] in PRESETS:  # the paper preset in red, other presets/thresholds in purple
                color = "crimson" if r.method == "paper" else "purple"
                ax.plot(100 * r.kv_kept, r.score_mean, "*", color=color, markersize=14, label=r.method, alpha=0.85)
            if r.method == "full":
                ax.axhline(r.score_mean, color="gray", linestyle="--", linewidth=1, label="full cache")
                ax.plot(100.0, r.score_mean, "D", color="gray")
        ax.set_title(task_label(task, length), fontsize=10)
        ax.set_xlabel("KV kept (%)")
        ax.set_ylabel("mean score")
        ax.set_xlim(0, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    legend: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Mean score vs KV kept", fontsize=10)
    fig.tight_layout(rect=(0, 0.8 / (3.3 * nrows + 0.8) + 0.04, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_budget_distribution(records: Sequence[dict[str, Any]], path: Path, method: str = "paper") -> Path:
    """Per task: the distribution over samples of ReFreeKV's KV kept (%): budgets are an output, not an input."""
    plt = _pyplot()
    data: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["method"] == method:
            data[task_label(r["task"], int(r.get("length") or 0))].append(100 * r["kv_kept"])
    labels = sorted(data)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels)), 3.4))
    if labels:
        ax.boxplot([data[k] for k in labels], showmeans=True)
        for i, k in enumerate(labels, start=1):
            ax.scatter(np.full(len(data[k]), i) + np.linspace(-0.08, 0.08, len(data[k])), data[k], s=12, alpha=0.6)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("KV kept (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{method}: KV kept per sample, by task", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_profile(records: Sequence[dict[str, Any]], path: Path, method: str = "paper") -> Path:
    """Per task: ReFreeKV's budget of each layer, averaged over samples (which layers the method spares)."""
    plt = _pyplot()
    data: dict[str, list[list[float]]] = defaultdict(list)
    for r in records:
        if r["method"] == method and r.get("layer_budgets"):
            data[task_label(r["task"], int(r.get("length") or 0))].append(r["layer_budgets"])
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label in sorted(data):
        arr = np.array([b for b in data[label] if len(b) == len(data[label][0])], dtype=float)
        ax.plot(np.arange(arr.shape[1]), 100 * arr.mean(axis=0), "o-", markersize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("budget (% of prompt rows kept)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{method}: per-layer budget, mean over samples", fontsize=10)
    ax.grid(alpha=0.3)
    if data:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_points(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per preset, ``(threshold, mean budget, share of outputs identical to the full cache's)`` for every threshold
    it ran at (over all samples), sorted by threshold; presets with a single threshold are left out."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        preset = r["method"].split("@")[0]
        if preset in PRESETS and r.get("threshold") is not None:
            groups[(preset, float(r["threshold"]))].append(r)
    out: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (preset, t), rs in sorted(groups.items()):
        out[preset].append((t, float(np.mean([r["mean_budget"] for r in rs])),
                            float(np.mean([r["exact_match_full"] for r in rs]))))
    return {p: pts for p, pts in out.items() if len(pts) > 1}


def plot_threshold_sweep(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Mean budget against fidelity (output identical to the full cache's), one curve per preset, points labelled
    by threshold; ``None`` when no preset ran at two thresholds or more (``--methods sweep`` runs them all)."""
    points = sweep_points(records)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for preset, pts in points.items():
        ts, budgets, same = zip(*pts)
        ax.plot([100 * b for b in budgets], [100 * s for s in same], "o-", label=preset)
        for t, b, s in pts:
            ax.annotate(f"{100 * t:g}%", (100 * b, 100 * s), textcoords="offset points", xytext=(3, 3), fontsize=7)
    baselines = sorted({r["method"] for r in records if r["method"].endswith(("@matched", "@matched-set", "@oracle"))})
    for name, marker in zip(baselines, "s^xvD<>"):  # fixed budgets for reference, over the same samples
        rs = [r for r in records if r["method"] == name]
        ax.plot(100 * np.mean([r["mean_budget"] for r in rs]), 100 * np.mean([r["exact_match_full"] for r in rs]), marker,
                markersize=9, markerfacecolor="none", label=name)
    ax.set_xlabel("mean budget (% of the prompt's rows kept)")
    ax.set_ylabel("outputs identical to the full cache (%)")
    ax.set_xlim(0, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Threshold sweep: budget vs fidelity (labels: T)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """The plots as PNG files in ``out_dir`` (the threshold sweep only when a preset ran at several thresholds)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_score_vs_budget(records, out_dir / "score_vs_budget.png"),
        plot_budget_distribution(records, out_dir / "budget_distribution.png"),
        plot_layer_profile(records, out_dir / "layer_profile.png"),
        plot_threshold_sweep(records, out_dir / "threshold_sweep.png"),
    ]
    return [p for p in paths if p is not None]


# ---------------------------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def environment(model: Any = None, backend: str | None = None) -> dict[str, Any]:
    """Machine, load, library versions, and (when given) the model class and the backend's own description."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("refreekv_edu", "numpy", "torch", "transformers", "mlx", "mlx-lm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    env = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "versions": versions,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if hasattr(os, "getloadavg"):  # timings on a shared machine are only comparable within one run
        env["load_average"] = round(os.getloadavg()[0], 2)
    if model is not None:
        env["model_class"] = f"{type(model).__module__}.{type(model).__name__}"
    if backend is not None:
        from ..backend import get_backend

        try:
            env["backend"] = get_backend(backend).describe()
        except Exception as exc:  # noqa: BLE001 - the report must not fail on an unusable backend
            env["backend"] = f"{backend} ({type(exc).__name__})"
    return env


def write_summary(records: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """``<out>/summary.md``: the table and the findings."""
    rows = summarize(records)
    path = Path(out_dir) / "summary.md"
    path.write_text("\n".join(["# Summary", "", markdown_table(rows), "", *[f"- {f}" for f in findings(rows, records)], ""]))
    return path


def read_speed(path: str | Path) -> dict[str, Any] | None:
    """``<out>/speed.json`` of the speed step, or ``None`` when there is none (or it is unreadable, with a warning)."""
    import json
    import warnings

    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable speed results ({exc}); left out of the report", UserWarning, stacklevel=2)
        return None
    return data if isinstance(data, dict) and "best" in data else None


def speed_line(speed: dict[str, Any]) -> str:
    """One sentence: decode tokens/s of the paper preset and the full cache at the speed step's length, and the ratio."""
    best, st = speed.get("best", {}), speed.get("settings", {})
    full, paper = best.get("full", {}), best.get("paper", {})
    ratio = speed.get("decode_speed_ratio")
    return (f"at L = {full.get('prompt_tokens', st.get('length', '?'))} tokens, {full.get('new_tokens', '?')} decode steps: "
            f"full cache {_fmt(full.get('decode_tok_s'), '.1f')} tok/s, paper preset {_fmt(paper.get('decode_tok_s'), '.1f')} "
            f"tok/s with {_fmt(100 * paper.get('kv_bytes_kept', 0) / max(1, paper.get('kv_bytes_full', 1)), '.1f')}% of the KV "
            f"bytes: decode speed ratio compressed/full = {_fmt(ratio, '.2f')}")


def oracle_table(records: Sequence[dict[str, Any]]) -> str:
    """Per oracle method and group: the paper's budget against the oracle's (see :class:`OracleComparison`)."""
    lines = ["| oracle | group | n | paper budget | oracle budget | gap (paper - oracle) | paper above | paper below "
             "| within resolution | paper output = full | below and still = full |", "|" + "---|" * 11]
    for name in sorted({r["method"] for r in records if r["method"].endswith("@oracle")}):
        for c in oracle_comparisons(records, name):
            lines.append(f"| {name} | {c.group} | {c.n} | {_pct(c.paper_budget, '.1f')} | {_pct(c.oracle_budget, '.1f')} "
                         f"| {_fmt(100 * c.gap, '+.1f')} [{_fmt(100 * c.gap_ci[0], '+.1f')}, {_fmt(100 * c.gap_ci[1], '+.1f')}] pts "
                         f"| {_pct(c.above)} | {_pct(c.below)} | {_pct(c.inside)} | {_pct(c.paper_exact)} | {c.below_but_same} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def matched_table(records: Sequence[dict[str, Any]]) -> str:
    """Per matched baseline and group: the paper vs the fixed budget at the same mean, paired over samples."""
    lines = ["| fixed budget | group | n | budget paper / fixed | keeps full: paper / fixed | difference [95% CI] "
             "| only paper / only fixed | exact = full: paper / fixed | difference [95% CI] |", "|" + "---|" * 9]
    for base in sorted({r["method"] for r in records if r["method"].endswith(("@matched", "@matched-set"))}):
        for c in paired_comparisons(records, base):
            lines.append(f"| {base} | {c.group} | {c.n} | {_pct(c.paper_budget, '.1f')} / {_pct(c.base_budget, '.1f')} "
                         f"| {_pct(c.paper_keeps)} / {_pct(c.base_keeps)} | {_fmt(100 * c.diff_keeps, '+.0f')} "
                         f"[{_fmt(100 * c.diff_keeps_ci[0], '+.0f')}, {_fmt(100 * c.diff_keeps_ci[1], '+.0f')}] pts "
                         f"| {c.only_paper} / {c.only_baseline} | {_pct(c.paper_exact)} / {_pct(c.base_exact)} "
                         f"| {_fmt(100 * c.diff_exact, '+.0f')} [{_fmt(100 * c.diff_exact_ci[0], '+.0f')}, "
                         f"{_fmt(100 * c.diff_exact_ci[1], '+.0f')}] pts |")
    return "\n".join(lines) if len(lines) > 2 else ""


def sweep_table(records: Sequence[dict[str, Any]]) -> str:
    """Per preset and threshold: mean budget and identical-output rate over all samples, with 95% intervals."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        preset = r["method"].split("@")[0]
        if preset in PRESETS and r.get("threshold") is not None:
            groups[(preset, float(r["threshold"]))].append(r)
    if len({p for p, _ in groups}) == len(groups):  # no preset at two thresholds
        return ""
    lines = ["| preset | T | n | mean budget | KV kept | exact = full | keeps full | token agree |", "|" + "---|" * 8]
    full = {r["sample_id"]: r for r in records if r["method"] == "full"}
    for (preset, t), rs in sorted(groups.items()):
        b = [r["mean_budget"] for r in rs]
        kv = [r["kv_kept"] for r in rs]
        ex = [r["exact_match_full"] for r in rs]
        keep = [_keeps(r, full[r["sample_id"]]) for r in rs if r["sample_id"] in full]
        ta = [r["token_agreement"] for r in rs]
        lines.append(f"| {preset} | {100 * t:g}% | {len(rs)} | {_pct_ci(np.mean(b), bootstrap_interval(b), '.1f')} "
                     f"| {_pct_ci(np.mean(kv), bootstrap_interval(kv), '.1f')} | {_pct_ci(np.mean(ex), bootstrap_interval(ex))} "
                     f"| {_pct_ci(np.mean(keep), bootstrap_interval(keep)) if keep else '-'} "
                     f"| {_fmt(np.mean(ta), '.2f')} [{_fmt(bootstrap_interval(ta)[0], '.2f')}, {_fmt(bootstrap_interval(ta)[1], '.2f')}] |")
    return "\n".join(lines)


def speed_table(speed: dict[str, Any]) -> str:
    """The speed step's kept runs: stage seconds, decode tokens/s, KV bytes and memory."""
    lines = ["| method | L (tok) | decode steps | prefill s | decide s | decode s | decode tok/s | KV held | RSS peak above start "
             "| process max RSS |", "|" + "---|" * 10]
    for name, r in speed.get("best", {}).items():
        mb = r.get("kv_bytes_kept", 0) / 2**20
        lines.append(f"| {name} | {r.get('prompt_tokens')} | {r.get('new_tokens')} | {_fmt(r.get('prefill_s'), '.2f')} "
                     f"| {_fmt(r.get('decide_s'), '.3f')} | {_fmt(r.get('decode_s'), '.2f')} | {_fmt(r.get('decode_tok_s'), '.1f')} "
                     f"| {mb:.1f} MiB ({_pct(r.get('kv_bytes_kept', 0) / max(1, r.get('kv_bytes_full', 1)), '.1f')}) "
                     f"| {_fmt(r.get('rss_peak_delta_mb'), '.0f')} MiB | {_fmt(r.get('maxrss_mb'), '.0f')} MiB |")
    return "\n".join(lines)


def write_results_md(records: Sequence[dict[str, Any]], run_info: dict[str, Any], path: str | Path,
                     plots_dir: str | Path | None = None, speed: dict[str, Any] | None = None) -> Path:
    """Write ``docs/results.md``: the command first, then computed findings, the comparison tables, the threshold
    sweep, the oracle budgets, the speed step, the full table with intervals, machine and versions, plots.

    Plots go to ``plots_dir`` (default ``<path's folder>/assets/results``) and are linked relatively.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = Path(plots_dir) if plots_dir else path.parent / "assets" / "results"
    plots = make_plots(records, plots_dir)
    rows = summarize(records)
    env = run_info.get("environment", {})
    cfg = run_info.get("config", {})
    argv = run_info.get("argv") or []
    cmd = "refreekv-edu " + shlex.join(argv[1:]) if argv and Path(argv[0]).name == "refreekv-edu" else shlex.join(argv)
    total_s = sum(r.get("wall_s", 0.0) for r in records)
    n_samples = len({r["sample_id"] for r in records})
    per_group = defaultdict(set)
    for r in records:
        per_group[task_label(r["task"], int(r.get("length") or 0))].add(r["sample_id"])
    sweep_png = next((p for p in plots if p.stem == "threshold_sweep"), None)

    def img(p: Path) -> str:
        return f"![{p.stem.replace('_', ' ')}]({os.path.relpath(p, path.parent)})"

    lines = [
        "# Results",
        "",
        "<!-- Generated by `refreekv-edu eval`; do not edit by hand. Rerun the command below to regenerate. -->",
        "",
        "Generated by this one command (from the repository root; it resumes from its `--out` folder, so on a finished "
        "run it only rebuilds this page and its plots):",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"{len(records)} generations on {n_samples} samples ("
        + ", ".join(f"{g}: {len(ids)}" for g, ids in sorted(per_group.items())) + "). Every compressed run is compared with "
        "the full-cache run of the same prompt (greedy decoding). Brackets are 95% percentile-bootstrap intervals over "
        "samples (2000 resamples, seed 0); comparisons between methods are paired by sample.",
        "",
        "## Findings (computed from the tables below)",
        "",
        *[f"- {f}" for f in findings(rows, records, speed)],
        "",
    ]
    mt = matched_table(records)
    if mt:
        lines += ["## ReFreeKV against fixed budgets at the same mean", "",
                  "`<ranking>@matched` keeps the same share in every pruned layer (sinks and layers 0-1 kept, like the "
                  "paper) so that its mean over layers equals the budget the paper preset chose **on that sample**; "
                  "`<ranking>@matched-set` uses **one** budget for every sample: the paper preset's mean budget over the "
                  "whole run. *keeps full*: task score at least the full cache's; *only paper / only fixed*: samples where "
                  "just one of the two kept it.", "", mt, ""]
    ot = oracle_table(records)
    if ot:
        lines += ["## The paper's budget against the oracle budget", "",
                  "The oracle budget of a sample is the smallest uniform fixed budget (same ranking, sinks and full layers) "
                  "whose greedy output equals the full cache's, found by binary search "
                  f"(resolution {_fmt(cfg.get('oracle_tolerance'), '.4g')} of a layer's rows; it assumes that more budget "
                  "never breaks an output a smaller one kept). Budgets are shares of the prompt's rows, averaged over all "
                  "layers; *above*/*below* compare the paper's budget, spread uniformly over the pruned layers, with the "
                  "search's bracket.", "", ot, ""]
    st = sweep_table(records)
    if st or sweep_png:
        lines += ["## Threshold sweep", "", "Mean budget against fidelity at T = 0.1%..10% (the paper's Figures 2-3).", ""]
        if sweep_png:
            lines += [img(sweep_png), ""]
        if st:
            lines += [st, ""]
    if speed:
        lines += ["## Speed and memory at a long prompt", "",
                  f"Decode speed, {speed_line(speed)}. Full cache and paper preset ran interleaved in one process "
                  f"({speed.get('settings', {}).get('repeats', '?')} runs each; the fastest decode kept; torch threads "
                  f"{speed.get('torch_threads', '-')}; load average {speed.get('load_average', '-')}). *KV held*: bytes of "
                  "the prompt's K/V after compaction. *RSS peak above start*: highest resident memory during the call "
                  "(sampled every 5 ms) minus the resident memory before it; it is dominated by the prefill's attention, "
                  "which both methods share, and memory the allocator kept from earlier runs is not counted again. "
                  "*process max RSS*: `getrusage` peak of the process so far (weights included).", "", speed_table(speed), ""]
    lines += [
        "## Summary per task x method",
        "",
        "*score* is the task metric (passkey/needles: answer found; continuation: ROUGE-L against the true text; "
        "short and reading: answer found; repeat: share of the output that continues the copied text word for word); "
        "*keeps full* is the share of samples whose score is at least the full cache's; "
        "*exact = full* the share of greedy outputs identical to the full cache's; "
        "*token agree* the share of the full cache's greedy tokens reproduced at the same positions; *KL 1st tok* is "
        "KL(full || method) in nats of the first decode step that reads the compressed cache; *KV kept* is bytes of "
        "prompt K/V held after compaction; *needle kept* is the share of the pruned layers' (layer, KV head) kept sets "
        "that still hold every token of the asked needle.",
        "",
        markdown_table(rows),
        "",
        "### Seconds per record",
        "",
        "Wall-clock stages of each generation on a shared machine: comparable within this run only.",
        "",
        timing_table(rows),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        if p != sweep_png:
            lines += [img(p), ""]
    lines += [
        "## Machine and versions",
        "",
        f"- date: {env.get('date_utc', '-')}",
        f"- machine: {env.get('machine', '-')}" + (f"; load average {env['load_average']} when the run started" if "load_average" in env else ""),
        f"- python {env.get('python', '-')}; " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        f"- backend: {env.get('backend', '-')}",
        f"- model: `{cfg.get('model', '-')}` on backend `{cfg.get('backend', '-')}` ({env.get('model_class', '-')}), "
        f"window {cfg.get('window', '-')}, gqa `{cfg.get('gqa', '-')}`, seed {cfg.get('seed', '-')}, haystack `{cfg.get('haystack', '-')}`"
        + (f", torch threads {cfg['threads']}" if cfg.get("threads") else ""),
        f"- {total_s / 60:.1f} minutes of generation time in all (runs resume, so records may come from earlier "
        "invocations; on a machine shared with other jobs timings are indicative only)",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
