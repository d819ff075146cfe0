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
    #: 95% bootstrap intervals (percentile, over samples) of ``score_mean``, ``keeps_full``, ``exact_match_full``,
    #: ``token_agreement`` and ``kv_kept``, keyed by those names.
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (deterministic for a seed; NaN for no values).

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
                prefill_s=float(np.mean([r["prefill_s"] for r in rs])),
                decide_s=float(np.mean([r["decide_s"] for r in rs])),
                decode_s=float(np.mean([r["decode_s"] for r in rs])),
                prompt_tokens=float(np.mean([r["prompt_tokens"] for r in rs])),
                intervals=intervals,
            ))
    return rows


def _fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return format(x, spec)


def _interval_cell(row: SummaryRow) -> str:
    def pair(name: str, scale: float, spec: str, unit: str = "") -> str:
        lo, hi = row.intervals.get(name, (float("nan"), float("nan")))
        return f"{_fmt(scale * lo, spec)}-{_fmt(scale * hi, spec)}{unit}" if np.isfinite(lo) else "-"

    return "; ".join([pair("score_mean", 1, ".2f"), pair("keeps_full", 100, ".0f", "%"), pair("exact_match_full", 100, ".0f", "%")])


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    """The summary as a GitHub markdown table (one line per task x length x method)."""
    head = ("| task | L (tok) | method | n | score mean | score worst | keeps full | token agree | exact = full "
            "| KL 1st tok | KV kept | needle kept | prefill s | decide s | decode s | 95% CI: score; keeps full; exact = full |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.prompt_tokens:.0f} | {r.method} | {r.n} | {_fmt(r.score_mean)} | {_fmt(r.score_worst)} "
            f"| {_fmt(100 * r.keeps_full, '.0f')}% | {_fmt(r.token_agreement)} | {_fmt(100 * r.exact_match_full, '.0f')}% "
            f"| {_fmt(r.first_token_kl, '.4f')} | {_fmt(100 * r.kv_kept, '.1f')}% | {_fmt(r.needle_kept, '.2f')} | {_fmt(r.prefill_s, '.2f')} "
            f"| {_fmt(r.decide_s, '.3f')} | {_fmt(r.decode_s, '.2f')} | {_interval_cell(r)} |"
        )
    return "\n".join(lines)


def task_label(task: str, length: int) -> str:
    """``"<task> @<length>"``, e.g. ``"passkey @1024"``; just ``task`` when ``length`` is 0 (no target length)."""
    return f"{task} @{length}" if length else task


def findings(rows: Sequence[SummaryRow]) -> list[str]:
    """Plain statements computed from the summary (no hand-written claims)."""
    out = []
    by_task: dict[tuple[str, int], dict[str, SummaryRow]] = defaultdict(dict)
    for r in rows:
        by_task[(r.task, r.length)][r.method] = r
    keeps_all, kv = [], []
    for (task, length), methods in by_task.items():
        ref = methods.get("paper")
        if ref is None:
            continue
        keeps_all.append(ref.keeps_full >= 1.0)
        kv.append(ref.kv_kept)
        matched = {m: r for m, r in methods.items() if m.endswith("@matched")}
        worst = min(matched.values(), key=lambda r: r.score_mean, default=None)
        line = (f"**{task_label(task, length)}**: ReFreeKV (paper) keeps full-cache performance on "
                f"{_fmt(100 * ref.keeps_full, '.0f')}% of samples (score {_fmt(ref.score_mean)} vs full "
                f"{_fmt(ref.full_score_mean)}, worst {_fmt(ref.score_worst)}) with {_fmt(100 * ref.kv_kept, '.1f')}% of the KV bytes; "
                f"token agreement with the full cache {_fmt(ref.token_agreement)}.")
        if ref.needle_kept is not None:
            line += f" The asked needle survives whole in {_fmt(100 * ref.needle_kept, '.0f')}% of its (layer, KV head) kept sets."
        if matched:
            parts = ", ".join(f"{m.split('@')[0]} {_fmt(r.score_mean)} (keeps full {_fmt(100 * r.keeps_full, '.0f')}%)"
                              for m, r in sorted(matched.items()))
            line += f" Fixed budgets at the same average budget: {parts}"
            if worst is not None and len({round(r.score_mean, 9) for r in matched.values()}) > 1:
                line += f"; the weakest is {worst.method}."
            else:
                line += "."
        oracles = {m: r for m, r in methods.items() if m.endswith("@oracle")}
        for m, r in sorted(oracles.items()):
            gap = 100 * (ref.mean_budget - r.mean_budget)
            line += (f" Oracle budget ({m.split('@')[0]}: the smallest fixed budget that reproduces the full cache's "
                     f"output) {_fmt(100 * r.mean_budget, '.1f')}% against the paper's {_fmt(100 * ref.mean_budget, '.1f')}%: "
                     f"ReFreeKV keeps {_fmt(abs(gap), '.1f')} points {'more' if gap >= 0 else 'less'}.")
        out.append(line)
    if keeps_all:
        out.insert(0, f"ReFreeKV (the paper preset) matches the full cache's score on every sample in {sum(keeps_all)} of {len(keeps_all)} "
                      f"task/length groups, keeping {_fmt(100 * float(np.mean(kv)), '.1f')}% of the KV bytes on average.")
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
            pts = sorted((100 * r.kv_kept, r.score_mean) for r in mine if r.method.startswith(ranking + "@"))
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"fixed {ranking}", alpha=0.8)
            for r in mine:
                if r.method == f"{ranking}@matched":
                    ax.plot(100 * r.kv_kept, r.score_mean, "s", color=color, markersize=9, markerfacecolor="none",
                            label=f"{ranking} at ReFreeKV's budget")
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
    path.write_text("\n".join(["# Summary", "", markdown_table(rows), "", *[f"- {f}" for f in findings(rows)], ""]))
    return path


def write_results_md(records: Sequence[dict[str, Any]], run_info: dict[str, Any], path: str | Path,
                     plots_dir: str | Path | None = None) -> Path:
    """Write ``docs/results.md``: command line, machine, versions, the table, computed findings, plots.

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
    lines = [
        "# Results",
        "",
        "<!-- Generated by `refreekv-edu eval`; do not edit by hand. Rerun the command below to regenerate. -->",
        "",
        "Measured on the bundled model unless the command says otherwise. Every compressed run is compared "
        "with the full-cache run of the same prompt (greedy decoding).",
        "",
        "## How this was produced",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"- date: {env.get('date_utc', '-')}",
        f"- machine: {env.get('machine', '-')}" + (f"; load average {env['load_average']} when the run started" if "load_average" in env else ""),
        f"- python {env.get('python', '-')}; " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        f"- backend: {env.get('backend', '-')}",
        f"- model: `{cfg.get('model', '-')}` on backend `{cfg.get('backend', '-')}` ({env.get('model_class', '-')}), "
        f"window {cfg.get('window', '-')}, gqa `{cfg.get('gqa', '-')}`, seed {cfg.get('seed', '-')}, haystack `{cfg.get('haystack', '-')}`",
        f"- {len(records)} generations, {total_s / 60:.1f} minutes of generation time in all (runs resume, so records may "
        "come from earlier invocations, on a machine shared with other jobs: timings here are indicative only; "
        "`bench/e2e_throughput.py` measures speed side by side)",
        "",
        "## Findings (computed from the table)",
        "",
        *[f"- {f}" for f in findings(rows)],
        "",
        "## Summary per task x method",
        "",
        "Columns: *score* is the task metric (passkey/needles: answer found; continuation: ROUGE-L against the true text; "
        "short and reading: answer found; repeat: share of the output that continues the copied text word for word); "
        "*keeps full* is the share of samples whose score is at least the full cache's; "
        "*token agree* is the share of the full cache's greedy tokens reproduced at the same positions; "
        "*exact = full* the share of outputs identical to the full cache's; *KL 1st tok* is KL(full || method) of the "
        "first decode step that reads the compressed cache; *KV kept* is bytes of prompt K/V held after compaction; "
        "*needle kept* is the share of the pruned layers' (layer, KV head) kept sets that still hold every token of the "
        "asked needle. "
        "`<ranking>@matched` keeps the same share in every pruned layer (sinks and layers 0-1 kept, like the paper), "
        "so that its mean over layers equals the budget the paper preset chose on that sample.",
        "",
        markdown_table(rows),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        rel = os.path.relpath(p, path.parent)
        lines += [f"![{p.stem.replace('_', ' ')}]({rel})", ""]
    path.write_text("\n".join(lines))
    return path
