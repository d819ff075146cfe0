"""The demo's output: the printed table and its text helpers, the reason a run failed, ``summary.json``, the traces
and the per-input x per-layer budget plot.

This module imports only the standard library and numpy; matplotlib loads when the plot is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .demo_setup import METHODS, DemoResult, DemoRun, method_label
from .eval.tasks import Sample

_SPARK = "▁▂▃▄▅▆▇█"


# ---------------------------------------------------------------------------------------------- text helpers
def sparkline(values: Sequence[float]) -> str:
    """One character per value in [0, 1] (``▁`` under 12.5% ... ``█`` from 87.5%).

    Example:
        >>> sparkline([0.0, 0.3, 0.6, 1.0])
        '▁▃▅█'
    """
    return "".join(_SPARK[min(len(_SPARK) - 1, max(0, int(float(v) * len(_SPARK))))] for v in values)


def budget_summary(budgets: Sequence[float]) -> str:
    """``min 2% med 41% max 100%`` of per-layer budgets ('' for none)."""
    if len(budgets) == 0:
        return ""
    b = 100 * np.asarray(budgets, dtype=float)
    return f"min {b.min():.0f}% med {np.median(b):.0f}% max {b.max():.0f}%"


def short_answer(text: str, width: int = 30) -> str:
    """The answer on one line, cut to ``width`` characters with ``...``."""
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 3] + "..."


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def _mib(num_bytes: int) -> float:
    return num_bytes / 2**20


def _expected(sample: Sample) -> str:
    return repr(short_answer(sample.references[0], 40))


def sink_share(trace: Any) -> np.ndarray:
    """``(num_layers,)`` position 0's share of the last row's squared attention (NaN for full layers).

    The row covers the positions the halting signal could see (sinks and candidates). When one position holds
    most of the sum of squares, evicting everything else barely moves the L2 norm the rule watches.
    """
    out = []
    for d in trace.layers:
        row = np.concatenate([np.asarray(d.sink_attn, np.float64), np.asarray(d.last_attn, np.float64)], axis=1)
        if d.full_layer or row.shape[1] == 0:
            out.append(float("nan"))
            continue
        a2 = row**2
        total = a2.sum(axis=1)
        out.append(float(np.mean(a2[:, 0] / np.where(total > 0, total, 1.0))))
    return np.asarray(out)


def failure_reason(sample: Sample, run: DemoRun, full: DemoRun | None, trace: Any = None) -> str | None:
    """One line on why ``run`` is wrong or differs from the full cache, from its answer and its trace."""
    if run.error is not None:
        return f"crashed: {run.error}"
    if run.method == "full":
        return None if run.correct else f"the full cache itself answers wrong (expected {_expected(sample)})"
    if run.correct and run.same_as_full is not False:
        return None
    parts = []
    if full is not None and full.error is None and run.same_as_full is False:
        k = next((i for i, (a, b) in enumerate(zip(run.tokens, full.tokens)) if a != b), min(len(run.tokens), len(full.tokens)))
        parts.append(f"diverges from the full cache at answer token {k + 1}")
    needle = sample.meta.get("needle")
    if needle and trace is not None and trace.layers and trace.tokens:
        positions = trace.positions_of(needle)
        if positions:
            pruned = [i for i, d in enumerate(trace.layers) if not d.full_layer]
            share = trace.kept_share(positions)  # (layers, heads)
            whole = sum(bool(share[i].min() >= 1.0) for i in pruned)
            parts.append(f"the key's rows were kept whole in {whole} of {len(pruned)} pruned layers")
    in_metric = trace is not None and any((d.sinks == 0 or d.sinks_in_metric) and not d.full_layer for d in trace.layers)
    if in_metric:  # only then can a sink dominate the norm the halting rule watches
        share = sink_share(trace)
        if np.isfinite(share).any() and np.nanmean(share) >= 0.5:
            parts.append(f"position 0 holds {100 * np.nanmean(share):.0f}% of the last row's squared attention, so "
                         "evicting the rest barely moves the norm")
    if not run.correct:
        parts.insert(0, f"wrong (expected {_expected(sample)})")
    else:
        parts.insert(0, "still right")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- output files
def write_outputs(path: Path, samples: Sequence[Sample], labels: Sequence[str], prompt_tokens: Sequence[int],
                  runs: Sequence[DemoRun], traces: dict[tuple[int, str], Any], fixed: float | None, kv_dtype: str,
                  model: str, plot: bool, save_traces: bool) -> list[Path]:
    """Write ``summary.json``, the paper traces and ``budgets.png`` into ``path``; return the files written."""
    files = []
    summary = {
        "model": model,
        "kv_dtype": kv_dtype,
        "fixed_budget": fixed,
        "fixed_policy": "FixedBudget(ranking='recency', sinks=4, window=0, full_layers=(0, 1)) at the budget whose "
                        "mean over layers equals ReFreeKV's mean budget over the set",
        "prompts": [{"label": label, "id": s.id, "task": s.task, "prompt_tokens": n, "references": s.references,
                     "prompt": s.prompt} for label, s, n in zip(labels, samples, prompt_tokens)],
        "runs": [{k: v for k, v in vars(r).items()} for r in runs],
    }
    files.append(path / "summary.json")
    files[-1].write_text(json.dumps(summary, indent=1))
    if save_traces:
        for (i, method), trace in sorted(traces.items()):
            if method == "paper" and trace.layers:
                files.append(trace.save(path / f"trace_{i + 1}_{samples[i].task}_paper.json"))
    if plot:
        rows = {m: [next((r.layer_budgets for r in runs if r.prompt == label and r.method == m), []) for label in labels]
                for m in ("paper", "official-script")}
        if any(b for m in rows.values() for b in m):
            names = [f"{label} ({n} tok)" for label, n in zip(labels, prompt_tokens)]
            files.append(plot_budget_grid(rows, names, path / "budgets.png", model))
    return files


def plot_budget_grid(rows: dict[str, list[list[float]]], names: Sequence[str], path: Path, model: str) -> Path:
    """Per-input x per-layer budgets, one heat map per method, saved as PNG.

    Args:
        rows: method -> one list of per-layer budgets per prompt (an empty list for a failed run).
        names: the prompts' labels (rows of each map).
        path: the PNG to write.
        model: named in the title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    width = max((len(b) for m in rows.values() for b in m), default=1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.4 + 0.6 * len(names) * len(rows)), dpi=110, squeeze=False,
                             layout="constrained")
    image = None
    for ax, (method, budgets) in zip(axes[:, 0], rows.items()):
        grid = np.full((len(names), width), np.nan)
        for i, b in enumerate(budgets):
            grid[i, : len(b)] = 100 * np.asarray(b)
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", interpolation="nearest")
        means = [f"{np.nanmean(g):.0f}%" if np.isfinite(g).any() else "failed" for g in grid]
        ax.set_yticks(range(len(names)), [f"{n}\nmean {m}" for n, m in zip(names, means)], fontsize=8)
        ax.set_xticks(range(0, width, 2))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{method}: share of the prompt's KV rows kept per layer", fontsize=9)
    axes[-1, 0].set_xlabel("layer")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="kept (%)", fraction=0.03, pad=0.01)
    fig.suptitle(f"ReFreeKV budgets per input and layer ({model})", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the report
def format_report(result: DemoResult) -> str:
    """The demo's printed report: one table, the set's means, the failures, the files."""
    header = (f"{'prompt':<17} {'method':<26} {'answer':<40} {'right':<5} {'=full':<5} {'budget':>7} "
              f"{'KV MiB (' + result.kv_dtype + ')':>16}  per-layer budgets (layer 0 ->)")
    lines = ["", header, "-" * len(header)]
    for label, n in zip(result.labels, result.prompt_tokens):
        head = [f"{label}", f"{n} tokens" if n else ""]
        for j, run in enumerate(r for r in result.runs if r.prompt == label):
            name = head[j] if j < len(head) else ""
            if run.error is not None:
                lines.append(f"{name:<17} {run.label:<26} {'FAILED':<40}")
                continue
            same = "ref" if run.method == "full" else {True: "yes", False: "NO", None: "?"}[run.same_as_full]
            kv = f"{_mib(run.kv_bytes_kept):.2f}/{_mib(run.kv_bytes_full):.2f}"
            layers = f"{sparkline(run.layer_budgets)} {budget_summary(run.layer_budgets)}" if run.layer_budgets else ""
            lines.append(f"{name:<17} {run.label:<26} {short_answer(run.answer, 40):<40} {'yes' if run.correct else 'NO':<5} "
                         f"{same:<5} {100 * run.budget:6.1f}% {kv:>16}  {layers}".rstrip())
        lines.append("")
    lines.append("Over the set (mean budget; answers right; answers equal to the full cache's):")
    for method in METHODS:
        rs = [r for r in result.runs if r.method == method]
        ok = [r for r in rs if r.error is None]
        label = method_label(method) if method != "matched" or result.fixed_budget is None else (
            f"fixed recency {100 * result.fixed_budget:.1f}% (matched)")
        lines.append(f"  {label:<34} {100 * result.mean_budget(method):5.1f}%   right {sum(r.correct for r in ok)}/{len(rs)}"
                     f"   = full {sum(bool(r.same_as_full) for r in ok)}/{len(rs)}")
    if result.fixed_budget is not None:
        lines.append(f"  (fixed: FixedBudget(ranking='recency', sinks=4, window=0, full_layers=(0, 1)) keeping "
                     f"{100 * result.fixed_budget:.1f}% in each pruned layer, so its mean over layers equals ReFreeKV's "
                     "mean over the set)")
    problems = [r for r in result.runs if r.reason]
    if problems:
        lines += ["", "Failures and differences from the full cache:"]
        for r in problems:
            tag = "FAIL" if r.failed else "diff"
            lines.append(f"  {tag} {r.prompt} / {r.label}: {r.reason}")
    if result.files:
        lines += ["", f"Wrote to {result.out_dir}:"] + [f"  {p.name} ({_size(p)})" for p in result.files]
    lines.append(f"Backend {result.backend}; model load {result.load_s:.1f}s; whole demo {result.total_s:.1f}s.")
    return "\n".join(lines)


__all__ = [
    "budget_summary", "failure_reason", "format_report", "plot_budget_grid", "short_answer", "sink_share", "sparkline",
    "write_outputs",
]
