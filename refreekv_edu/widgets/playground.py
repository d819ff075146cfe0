"""``ThresholdPlayground``: move the threshold, watch every layer's budget re-decided instantly.

A decision stores what it was made from (each head's candidate ``order`` and the last token's attention
``last_attn``), so changing the threshold needs no model: :func:`refreekv_edu.halting.halting_cut` gives
each layer's new ``e*`` and the budget follows, ``(n - e* + w) / L``. Next to it stand fixed-budget
baselines, which keep the same share of every layer whatever the input; the fair one keeps ReFreeKV's
mean budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..decision import LayerDecision, Trace
from ..halting import check_threshold, halting_cut
from ..policies import FixedBudget
from . import plots
from .deps import require_ipywidgets
from .explorer import check_trace


def layer_cut(decision: LayerDecision, threshold: float) -> int:
    """``e*`` of one stored decision re-decided at ``threshold`` (0 when it has no candidates)."""
    if decision.n_candidates == 0:
        return 0
    if np.asarray(decision.last_attn).size == 0:
        raise ValueError(
            f"layer {decision.layer} stores no last_attn, so it cannot be re-decided; record traces with a policy "
            "that keeps the halting signal (ReFreeKV, FixedBudget)"
        )
    return halting_cut(decision.last_attn, decision.order, threshold)


def budgets_at_threshold(trace: Trace, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-decide every layer of ``trace`` at ``threshold``.

    Returns:
        ``(cuts, budgets)``, both ``(num_layers,)``: ``e*`` per layer (int64) and the budget
        ``(n - e* + w) / L`` per layer (float64; 1.0 for layers without candidates).
    """
    threshold = check_threshold(threshold)
    cuts = np.array([layer_cut(d, threshold) for d in trace.layers], dtype=np.int64)
    budgets = np.array(
        [(d.prompt_len - c) / d.prompt_len if d.prompt_len else 1.0 for d, c in zip(trace.layers, cuts)],
        dtype=np.float64,
    )
    return cuts, budgets


def fixed_budget_rows(budget: float, decision: LayerDecision) -> float:
    """The share of ``decision``'s prompt that ``FixedBudget(budget)`` would keep (window and one candidate included)."""
    policy = FixedBudget(budget=budget, window=max(decision.window, 1))
    if decision.n_candidates == 0:
        return 1.0
    evicted = policy.num_evicted(np.asarray(decision.curve), decision.prompt_len, decision.window)
    return (decision.prompt_len - evicted) / decision.prompt_len


class ThresholdPlayground:
    """A threshold slider that re-decides every layer of a trace, with fixed-budget baselines.

    Args:
        trace: a trace whose decisions store ``order`` and ``last_attn`` (all traces made by this package do).
        baselines: fixed budgets to draw for comparison (shares of the prompt, in ``(0, 1]``).
        max_threshold: right end of the slider (the sweep plot covers ``[0, max_threshold]``).

    Attributes (read them after moving the slider): :attr:`threshold`, :attr:`cuts`, :attr:`budgets`,
    :attr:`mean_budget`, :attr:`baselines` (name -> mean budget actually kept), :attr:`reference_budgets`.

    Example:
        >>> from refreekv_edu.widgets import ThresholdPlayground, synthetic_trace
        >>> pg = ThresholdPlayground(synthetic_trace())
        >>> before = pg.mean_budget
        >>> pg.threshold_slider.value = 0.2          # accept losing more norm ...
        >>> pg.mean_budget <= before                 # ... and every layer keeps less (or as much)
        True
    """

    def __init__(self, trace: Trace, baselines: Sequence[float] = (0.25, 0.5), max_threshold: float = 0.3) -> None:
        widgets = require_ipywidgets()
        check_trace(trace)
        self.trace = trace
        self.fixed = [float(b) for b in baselines]
        for b in self.fixed:
            FixedBudget(budget=b)  # validates: raises a ValueError saying what a budget must be
        max_threshold = check_threshold(max_threshold)
        start = next((d.threshold for d in trace.layers if d.threshold is not None), 0.05)
        self.reference_budgets = trace.budgets
        self.sweep_thresholds = np.linspace(0.0, max_threshold, 31)
        self.sweep_mean_budgets = np.array([budgets_at_threshold(trace, t)[1].mean() for t in self.sweep_thresholds])
        self.threshold_slider = widgets.FloatSlider(
            value=min(start, max_threshold),
            min=0.0,
            max=max_threshold,
            step=0.005,
            description="threshold",
            readout_format=".3f",
            continuous_update=True,
        )
        self.summary = widgets.HTML()
        self.budget_image = widgets.Image(format="png")
        self.sweep_image = widgets.Image(format="png")
        self.table = widgets.HTML()
        self.widget = widgets.VBox(
            [self.threshold_slider, self.summary, widgets.HBox([self.budget_image, self.sweep_image]), self.table]
        )
        self.widget.add_class("rk-threshold-playground")
        self.threshold_slider.observe(lambda _: self._update(), names="value")
        self._update()

    # ------------------------------------------------------------------ state
    @property
    def threshold(self) -> float:
        """The threshold the budgets are decided at; setting it moves the slider."""
        return float(self.threshold_slider.value)

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = check_threshold(value)
        if value > self.threshold_slider.max:
            raise ValueError(f"threshold {value} is beyond the slider's range [0, {self.threshold_slider.max}]")
        self.threshold_slider.value = value

    @property
    def mean_budget(self) -> float:
        """Mean over layers of the budgets at the current threshold (share of all prompt KV rows kept)."""
        return float(self.budgets.mean())

    @property
    def baselines(self) -> dict[str, float]:
        """Fixed-budget baselines, name -> share of the prompt they keep (same in every layer)."""
        first = self.trace.layers[0]
        out = {
            f"fixed {b:.0%}": float(np.mean([fixed_budget_rows(b, d) for d in self.trace.layers])) for b in self.fixed
        }
        out["fixed @ same mean"] = fixed_budget_rows(self.mean_budget, first)
        return out

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return (
            f"ThresholdPlayground(threshold={self.threshold:.3f}, mean_budget={self.mean_budget:.3f}, {self.trace!r})"
        )

    # ------------------------------------------------------------------ internals
    def _update(self) -> None:
        self.cuts, self.budgets = budgets_at_threshold(self.trace, self.threshold)
        labels = [str(d.layer if d.layer is not None else i) for i, d in enumerate(self.trace.layers)]
        spread = f"{self.budgets.min():.0%} - {self.budgets.max():.0%}"
        self.summary.value = (
            f"threshold <b>{self.threshold:.3f}</b>: every layer evicts while it loses at most "
            f"{self.threshold:.1%} of its attention norm. Mean budget <b>{self.mean_budget:.1%}</b> of the prompt's "
            f"KV rows (layers range {spread}); a fixed budget keeps the same share in every layer."
        )
        baselines = self.baselines
        self.budget_image.value = plots.figure_png(
            lambda ax: plots.plot_budgets(
                ax,
                self.budgets,
                labels=labels,
                baselines=baselines,
                reference=self.reference_budgets,
                title=f"budget per layer at threshold {self.threshold:.3f}",
            ),
            size=(6.0, 3.2),
        )
        self.sweep_image.value = plots.figure_png(
            lambda ax: plots.plot_threshold_sweep(
                ax, self.sweep_thresholds, self.sweep_mean_budgets, self.threshold, self.mean_budget
            ),
            size=(4.0, 3.2),
        )
        rows = "".join(
            f"<tr><td>{lab}</td><td>{c}</td><td>{b:.1%}</td><td>{r:.1%}</td></tr>"
            for lab, c, b, r in zip(labels, self.cuts, self.budgets, self.reference_budgets)
        )
        self.table.value = (
            "<style>.rk-budget-table td, .rk-budget-table th {padding: 0 10px; text-align: right;}</style>"
            '<div style="max-height: 14em; overflow-y: auto"><table class="rk-budget-table" '
            'style="font-size: 12px; border-collapse: collapse">'
            "<tr><th>layer</th><th>e*</th><th>budget</th><th>at the trace's threshold</th></tr>"
            f"{rows}</table></div>"
        )
