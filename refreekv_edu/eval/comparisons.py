"""Paired comparisons of the paper preset against fixed budgets and oracle budgets, per task group."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .summary import KEEP_TOLERANCE, bootstrap_interval, task_label


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
