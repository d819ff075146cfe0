"""The report's plots (PNG files): score against budget, budget distribution, layer profile, threshold sweep.

matplotlib is imported only when plotting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..policies import PRESETS
from .summary import summarize, task_label
from .sweep import sweep_groups, sweep_samples


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works headless
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write ``path`` (110 dpi) and close ``fig`` (open figures hold memory in a long notebook)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return save_figure(plt, fig, path)


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
    return save_figure(plt, fig, path)


def sweep_points(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per preset, ``(threshold, mean budget, share of outputs identical to the full cache's)`` for every threshold
    it ran at (over the samples the sweep covered, :func:`~.sweep.sweep_samples`), sorted by threshold; presets
    with a single threshold are left out."""
    out: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (preset, t), rs in sweep_groups(records).items():
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
    ids = sweep_samples(records)
    for name, marker in zip(baselines, "s^xvD<>"):  # fixed budgets for reference, over the same samples
        rs = [r for r in records if r["method"] == name and r["sample_id"] in ids]
        ax.plot(100 * np.mean([r["mean_budget"] for r in rs]), 100 * np.mean([r["exact_match_full"] for r in rs]), marker,
                markersize=9, markerfacecolor="none", label=name)
    ax.set_xlabel("mean budget (% of the prompt's rows kept)")
    ax.set_ylabel("outputs identical to the full cache (%)")
    ax.set_xlim(0, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Threshold sweep: budget vs fidelity (labels: T)", fontsize=10)
    return save_figure(plt, fig, path)


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
