"""The widgets' matplotlib figures, drawn off-screen and returned as PNG bytes.

The figures use ``matplotlib.figure.Figure`` with the Agg canvas directly, never ``pyplot``: no global
figure state, no dependence on the notebook's matplotlib backend, and the same bytes in JupyterLab, in
a static HTML export and in a test. Each ``plot_*`` function draws on an ``Axes`` you pass, so notebooks can
reuse them in their own figures; :func:`figure_png` wraps one of them into PNG bytes for an ``ipywidgets.Image``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

KEPT_COLOR, EVICTED_COLOR, WINDOW_COLOR, CUT_COLOR = "#74c476", "#bdbdbd", "#6baed6", "#e6550d"
SINK_COLOR, FULL_COLOR = "#fd8d3c", "#9e9ac8"


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (5.0, 3.0), dpi: int = 90) -> bytes:
    """Make a one-axes figure, let ``draw(ax)`` fill it, return the PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_ratio_curve(
    ax: Any,
    curve: np.ndarray,
    threshold: float | None,
    cut: int,
    step: int | None = None,
    title: str | None = None,
) -> None:
    """The halting curve ``ratio(e)`` ``(n,)`` against ``e``, the threshold line and the cut ``e*``.

    Args:
        ax: a matplotlib Axes.
        curve: ``(n,)`` ratio of the attention norm lost when each head evicts its ``e`` least important candidates.
        threshold: the halting threshold (``None``: no line, e.g. fixed budgets).
        cut: ``e*``, the number evicted.
        step: optional current step to mark (StepThrough).
        title: axes title.
    """
    curve = np.asarray(curve, dtype=np.float64)
    e = np.arange(curve.size)
    ax.plot(e, curve, color="#3182bd", lw=1.6, label="ratio(e): norm lost")
    if threshold is not None:
        ax.axhline(threshold, color="#636363", ls="--", lw=1, label=f"threshold {threshold:g}")
    if curve.size:
        ax.axvline(cut, color=CUT_COLOR, lw=1.2, label=f"cut e* = {cut}")
        ax.plot([cut], [curve[min(cut, curve.size - 1)]], "o", color=CUT_COLOR)
    if step is not None and curve.size:
        ax.plot([step], [curve[min(step, curve.size - 1)]], "s", color="black", ms=6, label=f"step e = {step}")
    if not curve.size:  # a full layer (or no candidates): nothing was decided
        ax.text(0.5, 0.5, "no candidates: nothing to evict", ha="center", va="center", transform=ax.transAxes)
    top = float(curve.max()) if curve.size else 0.0
    # Zoom on what matters: the curve up to a little above the threshold (it climbs towards 1 after).
    ymax = 3.0 * threshold if threshold else 1.05 * top
    ax.set_ylim(0, min(1.05, max(ymax, 0.01)))
    ax.set_xlim(0, max(curve.size - 1, 1))
    ax.set_xlabel("e = candidates evicted per head (least important first)")
    ax.set_ylabel("ratio(e)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)


def plot_budgets(
    ax: Any,
    budgets: np.ndarray,
    labels: Sequence[str] | None = None,
    highlight: int | None = None,
    baselines: dict[str, Any] | None = None,
    reference: np.ndarray | None = None,
    title: str | None = None,
    full: np.ndarray | None = None,
) -> None:
    """Per-layer budgets ``(num_layers,)`` as bars, with optional highlighted layer and baseline lines.

    Args:
        ax: a matplotlib Axes.
        budgets: ``(num_layers,)`` fraction of each layer's prompt rows kept.
        labels: x tick labels (model layer indices); default ``0..num_layers-1``.
        highlight: index of the bar to draw in the cut colour (the layer being explored).
        baselines: name -> budget: a number is drawn as a horizontal line, a ``(num_layers,)`` array as a dotted
            line through the layers (a fixed budget that keeps full layers whole is not flat).
        reference: ``(num_layers,)`` budgets to draw as markers for comparison (e.g. the trace's own threshold).
        title: axes title.
        full: ``(num_layers,)`` bool, the full layers (never pruned), drawn in their own colour at 100%.
    """
    budgets = np.asarray(budgets, dtype=np.float64)
    x = np.arange(budgets.size)
    full = np.zeros(budgets.size, bool) if full is None else np.asarray(full, dtype=bool)
    colors = [CUT_COLOR if i == highlight else FULL_COLOR if full[i] else KEPT_COLOR for i in x]
    ax.bar(x, budgets, color=colors, width=0.8, label="ReFreeKV budget")
    if full.any():
        from matplotlib.patches import Patch

        ax.add_artist(
            ax.legend(handles=[Patch(color=FULL_COLOR, label="full layer: never pruned")], loc="lower left", fontsize=7)
        )
    if reference is not None:
        ax.plot(
            x,
            np.asarray(reference, dtype=np.float64),
            "_",
            color="black",
            ms=10,
            mew=2,
            label="at the trace's threshold",
        )
    for i, (name, value) in enumerate((baselines or {}).items()):
        value = np.asarray(value, dtype=np.float64)
        if value.ndim == 0:
            ax.axhline(float(value), color=f"C{i + 1}", ls=":", lw=1.4, label=f"{name}: {float(value):.2f}")
        else:
            ax.plot(x, value, color=f"C{i + 1}", ls=":", lw=1.4, marker=".", label=f"{name}: mean {value.mean():.2f}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("budget (share of prompt kept)")
    step = max(1, budgets.size // 16)
    ax.set_xticks(x[::step])
    ax.set_xticklabels(list(labels)[::step] if labels is not None else [str(i) for i in x[::step]], fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)


def plot_threshold_sweep(
    ax: Any, thresholds: np.ndarray, mean_budgets: np.ndarray, current: float, current_budget: float
) -> None:
    """Mean budget over layers as a function of the threshold, with the current threshold marked.

    Args:
        ax: a matplotlib Axes.
        thresholds: ``(T,)`` thresholds swept, ascending.
        mean_budgets: ``(T,)`` mean over layers of the share of prompt rows kept at each threshold.
        current: the threshold to mark.
        current_budget: the mean budget at ``current``.
    """
    ax.plot(thresholds, mean_budgets, color="#3182bd", lw=1.6)
    ax.plot([current], [current_budget], "o", color=CUT_COLOR, label=f"threshold {current:.3f}: {current_budget:.2f}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("threshold")
    ax.set_ylabel("mean budget over layers")
    ax.legend(loc="upper right", fontsize=7)


def plot_retained_norms(ax: Any, norms: np.ndarray, step: int, cut: int) -> None:
    """Each query head's retained norm ``r_h(e)`` ``(Hq, n)`` and their mean ``R(e)``, with the current step."""
    norms = np.asarray(norms, dtype=np.float64)
    e = np.arange(norms.shape[1])
    for h in range(norms.shape[0]):
        ax.plot(e, norms[h], color="#9ecae1", lw=0.8)
    mean = norms.mean(axis=0)
    ax.plot(e, mean, color="#08519c", lw=1.8, label="R(e) = mean over heads")
    ax.axvline(cut, color=CUT_COLOR, lw=1.2, label=f"cut e* = {cut}")
    if norms.shape[1]:
        ax.plot([step], [mean[min(step, mean.size - 1)]], "s", color="black", ms=6, label=f"step e = {step}")
    ax.set_xlabel("e = candidates evicted per head")
    ax.set_ylabel("retained norm r_h(e)")
    ax.legend(loc="lower left", fontsize=7)


def plot_kept_map(
    ax: Any, fates: np.ndarray, highlight: int | None = None, labels: Sequence[str] | None = None
) -> None:
    """Layers x positions map of one head's fate: ``fates`` ``(num_layers, L)`` with 0 evicted, 1 kept, 2 window,
    3 sink.

    Read a column to see whether a token survives in every layer, a row to see one layer's kept set.
    """
    from matplotlib.colors import ListedColormap

    fates = np.asarray(fates)
    ax.imshow(
        fates,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap([EVICTED_COLOR, KEPT_COLOR, WINDOW_COLOR, SINK_COLOR]),
        vmin=0,
        vmax=3,
    )
    if highlight is not None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((-0.5, highlight - 0.5), fates.shape[1], 1, fill=False, ec=CUT_COLOR, lw=2))
    ax.set_xlabel("prompt position")
    ax.set_ylabel("layer")
    step = max(1, fates.shape[0] // 10)
    rows = np.arange(fates.shape[0])[::step]
    ax.set_yticks(rows)
    ax.set_yticklabels(list(labels)[::step] if labels is not None else [str(r) for r in rows], fontsize=7)
