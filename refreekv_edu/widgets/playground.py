"""``ThresholdPlayground``: move the threshold, watch every layer's budget re-decided instantly.

A decision stores what it was made from (each head's candidate ``order``, the last token's attention
``last_attn`` on the candidates and ``sink_attn`` on the sinks), so changing the threshold needs no model:
:meth:`LayerDecision.cut <refreekv_edu.decision.LayerDecision.cut>` gives each layer's new ``e*`` (with the
sinks in the norm for the ``"sinks-in-metric"`` ablation) and the budget follows, ``(L - e*) / L``: the sinks,
the window and the ``n - e*`` candidates left. Full layers keep 100% at every threshold. Any preset works.

Next to it stand fixed-budget baselines, which keep the same share of every pruned layer whatever the input,
built on the same skeleton as the trace (the same protected rows, ``decision.protected = m + w``, and the same
full layers); the fair one keeps ReFreeKV's mean budget over the pruned layers.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..decision import LayerDecision, Trace
from ..halting import check_threshold
from ..policies import FixedBudget
from . import plots
from .deps import require_ipywidgets
from .explorer import check_trace, full_layer_mask, layer_labels
from .step_through import PAPER_THRESHOLD
from .token_view import FULL_LAYER


def layer_cut(decision: LayerDecision, threshold: float) -> int:
    """``e*`` of one stored decision re-decided at ``threshold`` (0 for a full layer or no candidates)."""
    if decision.full_layer or decision.n_candidates == 0:
        return 0
    if np.asarray(decision.last_attn).size == 0:
        raise ValueError(
            f"layer {decision.layer} stores no last_attn, so it cannot be re-decided; record traces with a policy "
            "that keeps the halting signal (ReFreeKV, FixedBudget)"
        )
    return decision.cut(threshold)


def budgets_at_threshold(trace: Trace, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-decide every layer of ``trace`` at ``threshold``.

    Returns:
        ``(cuts, budgets)``, both ``(num_layers,)``: ``e*`` per layer (int64) and the budget
        ``(L - e*) / L`` per layer (float64; sinks and window kept; 1.0 for full layers and layers without
        candidates).
    """
    threshold = check_threshold(threshold)
    cuts = np.array([layer_cut(d, threshold) for d in trace.layers], dtype=np.int64)
    budgets = np.array(
        [(d.prompt_len - c) / d.prompt_len if d.prompt_len else 1.0 for d, c in zip(trace.layers, cuts)],
        dtype=np.float64,
    )
    return cuts, budgets


def fixed_budget_rows(budget: float, decision: LayerDecision) -> float:
    """The share of ``decision``'s prompt that a fixed ``budget`` keeps on the same skeleton.

    ``FixedBudget`` keeps ``ceil(budget * L)`` rows: the ``decision.protected`` rows (sinks and window) and
    at least one candidate. A full layer stays whole (1.0), as in the trace's policy.
    """
    if decision.full_layer or decision.n_candidates == 0:
        return 1.0
    policy = FixedBudget(budget=budget, window=decision.window, sinks=decision.sinks, ranking="recency")
    evicted = policy.num_evicted(np.asarray(decision.curve), decision.prompt_len, decision.protected)
    return (decision.prompt_len - evicted) / decision.prompt_len


class ThresholdPlayground:
    """A threshold slider that re-decides every layer of a trace, with fixed-budget baselines.

    Args:
        trace: a trace whose decisions store ``order`` and ``last_attn`` (all traces made by this package do).
        baselines: fixed budgets to draw for comparison (shares of the prompt, in ``(0, 1]``).
        max_threshold: right end of the slider (the sweep plot covers ``[0, max_threshold]``).

    Attributes (read them after moving the slider): :attr:`threshold`, :attr:`cuts`, :attr:`budgets`,
    :attr:`mean_budget`, :attr:`baselines` (name -> mean budget over all layers actually kept),
    :attr:`baseline_budgets` (name -> ``(num_layers,)``), :attr:`reference_budgets`.

    Example:
        >>> from refreekv_edu.widgets import ThresholdPlayground, synthetic_trace
        >>> pg = ThresholdPlayground(synthetic_trace())
        >>> before = pg.mean_budget
        >>> pg.threshold                              # the paper's T
        0.01
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
        start = next((d.threshold for d in trace.layers if d.threshold is not None), PAPER_THRESHOLD)
        self.reference_budgets = trace.budgets
        self.sweep_thresholds = np.linspace(0.0, max_threshold, 31)
        self.sweep_mean_budgets = np.array([budgets_at_threshold(trace, t)[1].mean() for t in self.sweep_thresholds])
        self.threshold_slider = widgets.FloatSlider(
            value=min(start, max_threshold),
            min=0.0,
            max=max_threshold,
            step=0.001,
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
    def pruned(self) -> np.ndarray:
        """``(num_layers,)`` bool, True for the layers the policy prunes (not full layers)."""
        return ~full_layer_mask(self.trace)

    @property
    def matched_budget(self) -> float:
        """ReFreeKV's mean budget over the pruned layers at the current threshold (the fair fixed budget)."""
        return float(self.budgets[self.pruned].mean()) if self.pruned.any() else 1.0

    @property
    def baseline_budgets(self) -> dict[str, np.ndarray]:
        """Fixed-budget baselines, name -> ``(num_layers,)`` share of each layer's prompt kept.

        The same share in every pruned layer; full layers whole (the trace's skeleton). ``"fixed @ same mean"``
        keeps :attr:`matched_budget` (ceil to whole rows, so it is never below ReFreeKV's mean).
        """
        named = [(f"fixed {b:.0%}", b) for b in self.fixed] + [("fixed @ same mean", self.matched_budget)]
        return {
            name: np.array([fixed_budget_rows(b, d) for d in self.trace.layers], dtype=np.float64)
            for name, b in named
        }

    @property
    def baselines(self) -> dict[str, float]:
        """Fixed-budget baselines, name -> mean over all layers of the share of the prompt they keep."""
        return {name: float(v.mean()) for name, v in self.baseline_budgets.items()}

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
        labels = layer_labels(self.trace)
        pruned = self.budgets[self.pruned] if self.pruned.any() else self.budgets
        spread = f"{pruned.min():.0%} - {pruned.max():.0%}"
        full = [lab for lab, p in zip(labels, self.pruned) if not p]
        full_text = (
            f" Full layers {html.escape(', '.join(full))} keep 100% ({FULL_LAYER})." if full else ""
        )
        sinks_in = any(d.sinks_in_metric and d.sinks for d in self.trace.layers)
        metric = " (the sinks count in the norm: the sinks-in-metric ablation)" if sinks_in else ""
        self.summary.value = (
            f"threshold <b>{self.threshold:.3f}</b>: every pruned layer evicts while it loses at most "
            f"{self.threshold:.1%} of its attention norm{metric}. Mean budget <b>{self.mean_budget:.1%}</b> of the "
            f"prompt's KV rows (pruned layers range {spread}).{full_text} A fixed budget keeps the same share in "
            "every pruned layer."
        )
        baselines = self.baseline_budgets
        self.budget_image.value = plots.figure_png(
            lambda ax: plots.plot_budgets(
                ax,
                self.budgets,
                labels=labels,
                baselines=baselines,
                reference=self.reference_budgets,
                full=~self.pruned,
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
            f"<tr><td>{html.escape(lab)}</td><td>{'full' if not p else c}</td><td>{b:.1%}</td><td>{r:.1%}</td></tr>"
            for lab, c, b, r, p in zip(labels, self.cuts, self.budgets, self.reference_budgets, self.pruned)
        )
        self.table.value = (
            "<style>.rk-budget-table td, .rk-budget-table th {padding: 0 10px; text-align: right;}</style>"
            '<div style="max-height: 14em; overflow-y: auto"><table class="rk-budget-table" '
            'style="font-size: 12px; border-collapse: collapse">'
            "<tr><th>layer</th><th>e*</th><th>budget</th><th>at the trace's threshold</th></tr>"
            f"{rows}</table></div>"
        )
