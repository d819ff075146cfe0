"""Summary rows per (task, length, method) with bootstrap intervals, and their markdown tables.

Summaries are per (task, length, method): mean and worst task score, the share of samples on which the
method *keeps full-cache performance* (its score is at least the full cache's on that sample), the
fidelity metrics (token agreement, exact match with the full-cache output, first-token KL) and the KV
memory kept. Also the small number formatters the other report modules share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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

