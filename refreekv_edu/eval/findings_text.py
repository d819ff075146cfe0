"""The findings text: plain statements computed from the summary, the comparisons and the speed step."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..policies import PRESETS
from .comparisons import oracle_comparisons, paired_comparisons
from .layer_losses import layer_losses, layer_losses_finding
from .methods import KVPRESS_MASKING
from .plots import sweep_points
from .summary import SummaryRow, _ci, _fmt, _n, _pct, _pct_ci, bootstrap_interval, task_label


def _verdict(diff: float, ci: tuple[float, float]) -> str:
    if ci[0] > 0:
        return "the paper preset is better (the interval excludes 0)"
    if ci[1] < 0:
        return "the fixed budget is better (the interval excludes 0)"
    return "no difference this sample size can detect (the interval includes 0)"


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
            title = "Fixed budget at the same mean"
            if base.startswith("kvpress:"):  # a kvpress press: the same share of rows in every layer, layers 0-1 too
                title, kind = "kvpress press at the same mean", "compression ratio 1 - the paper's budget, every layer alike"
                if base.split(":", 1)[1].split("@")[0] in KVPRESS_MASKING:
                    kind += ", spread over heads; keys masked, no memory freed"
            line = (f"**{title}, {base}** ({kind}; mean budget {_fmt(100 * c.base_budget, '.1f')}% vs the "
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
    ll = layer_losses(records) if records else None
    line = layer_losses_finding(ll) if ll is not None else None
    if line:
        out.append(line)
    if speed and speed.get("decode_speed_ratio"):
        ratio = speed["decode_speed_ratio"]
        out.append(f"**Decode speed**: {speed_line(speed)} ({'faster' if ratio > 1 else 'not faster'} than the full cache"
                   f"{'' if speed.get('same_tokens') is None else '; same greedy tokens' if speed.get('same_tokens') else '; different greedy tokens'}).")
    return out


def speed_line(speed: dict[str, Any]) -> str:
    """One sentence: decode tokens/s of the paper preset and the full cache at the speed step's length, and the ratio."""
    best, st = speed.get("best", {}), speed.get("settings", {})
    full, paper = best.get("full", {}), best.get("paper", {})
    ratio = speed.get("decode_speed_ratio")
    return (f"at L = {full.get('prompt_tokens', st.get('length', '?'))} tokens, {full.get('new_tokens', '?')} decode steps: "
            f"full cache {_fmt(full.get('decode_tok_s'), '.1f')} tok/s, paper preset {_fmt(paper.get('decode_tok_s'), '.1f')} "
            f"tok/s with {_fmt(100 * paper.get('kv_bytes_kept', 0) / max(1, paper.get('kv_bytes_full', 1)), '.1f')}% of the KV "
            f"bytes: decode speed ratio compressed/full = {_fmt(ratio, '.2f')}")
