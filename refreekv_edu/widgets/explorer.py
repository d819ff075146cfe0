"""``DecisionExplorer``: browse a :class:`~refreekv_edu.decision.Trace` layer by layer and head by head.

What it shows, for the selected layer and head:

- the prompt as text, each token coloured sink / kept / evicted / protected window, its score in a tooltip.
  The sinks (the first ``m`` positions) have their own colour and say whether they count in the metric
  ("sink, kept, outside the metric" for the paper, "counted in the metric" for the ``"sinks-in-metric"``
  ablation); a full layer (``full_layers``, layers 0 and 1 in the paper) says "full layer: never pruned
  (paper, Appendix B)" and keeps everything;
- the halting curve ``ratio(e)`` with the threshold and the cut ``e*`` the policy chose;
- every layer's budget as bars (the selected one highlighted, full layers at 100% in their own colour):
  ReFreeKV gives layers different budgets;
- a layers x positions map of the selected head's kept sets.

Candidate indices are not positions: ``decision.order`` holds candidate indices and
``decision.candidate_positions()`` (``order + m``) the prompt positions. Every string taken from the trace
(tokens, policy, ranking, layer labels) is HTML-escaped before it is shown.

Everything the widget displays is also an attribute (``layer``, ``head``, ``decision``, ``kept_positions``,
``cut``, ``budgets``, ``tokens_html`` ...) so a test or a notebook cell can drive and check it without a browser.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from ..decision import LayerDecision, Trace
from ..halting import halting_curve
from . import plots
from .deps import require_ipywidgets
from .token_view import (
    EVICTED,
    FULL_LAYER,
    KEPT,
    SINK,
    WINDOW,
    placeholder_tokens,
    render_tokens,
    sink_label,
    token_classes,
)


def check_trace(trace: Trace) -> list[str]:
    """Validate a trace for display and return its tokens (placeholders ``[i]`` when it has none).

    Raises:
        TypeError: ``trace`` is not a Trace.
        ValueError: no layers, or tokens that do not match the prompt length.
    """
    if not isinstance(trace, Trace):
        raise TypeError(
            f"expected a refreekv_edu Trace (e.g. generate(...).trace or Trace.load(path)), got {type(trace).__name__}"
        )
    if not trace.layers:
        raise ValueError("the trace has no layer decisions; was it made with FullCache or an empty prompt?")
    lengths = {d.prompt_len for d in trace.layers}
    if len(lengths) != 1:
        raise ValueError(f"the trace's layers disagree on the prompt length: {sorted(lengths)}")
    length = lengths.pop()
    if not trace.tokens:
        return placeholder_tokens(length)
    if len(trace.tokens) != length:
        raise ValueError(
            f"the trace holds {len(trace.tokens)} tokens but its decisions cover {length} prompt positions; "
            "set trace.tokens to one display string per prompt position (or to [] for placeholders)"
        )
    return list(trace.tokens)


def decision_curve(decision: LayerDecision) -> np.ndarray:
    """``(n,)`` the decision's ratio curve; recomputed from ``last_attn`` and ``order`` if it was not stored
    (with the sinks in every tail for the ``"sinks-in-metric"`` ablation). Empty for a full layer."""
    curve = np.asarray(decision.curve, dtype=np.float32)
    if curve.size == decision.n_candidates:
        return curve
    always = decision.sink_attn if decision.sinks_in_metric and decision.sinks else None
    return halting_curve(decision.last_attn, decision.order, always_kept=always)


def layer_labels(trace: Trace) -> list[str]:
    """Display label of every decision: the model's layer index (``decision.layer``), else its index in the trace."""
    return [str(d.layer if d.layer is not None else i) for i, d in enumerate(trace.layers)]


def full_layer_mask(trace: Trace) -> np.ndarray:
    """``(num_layers,)`` bool, True for the layers the policy never prunes (budget 100%)."""
    return np.array([bool(d.full_layer) for d in trace.layers], dtype=bool)


def head_label(decision: LayerDecision, head: int) -> str:
    """Dropdown label of a kept-set owner: a KV head and its query heads (group) or a query head (expand)."""
    if decision.gqa == "group" and decision.group_size > 1:
        g = decision.group_size
        return f"KV head {head} (query heads {head * g}-{head * g + g - 1})"
    return f"head {head}"


class DecisionExplorer:
    """Interactive view of one trace: a layer slider, a head selector, the coloured prompt and two plots.

    Args:
        trace: what a policy decided (``generate(...).trace``, ``Trace.load(...)``, or a synthetic trace).
        layer: initial index into ``trace.layers`` (not the model's layer number; see ``decision.layer``).
        head: initial kept-set owner (KV head for ``gqa="group"``).

    Example:
        >>> from refreekv_edu.widgets import DecisionExplorer, synthetic_trace
        >>> ex = DecisionExplorer(synthetic_trace())     # the paper's preset: layers 0 and 1 are full layers
        >>> ex.is_full_layer, ex.decision.budget
        (True, 1.0)
        >>> ex.layer_slider.value = 2          # what dragging the slider does
        >>> ex.sink_positions.tolist(), int(ex.kept_positions[-1]) == ex.decision.prompt_len - 1
        ([0, 1, 2, 3], True)
    """

    def __init__(self, trace: Trace, layer: int = 0, head: int = 0) -> None:
        widgets = require_ipywidgets()
        self.trace = trace
        self.tokens = check_trace(trace)
        self._check_layer(layer)
        self._updating = False
        self.layer_slider = widgets.IntSlider(
            value=layer,
            min=0,
            max=len(trace.layers) - 1,
            description="layer",
            continuous_update=False,
        )
        self.head_dropdown = widgets.Dropdown(options=self._head_options(trace.layers[layer]), description="head")
        self.head_dropdown.value = self._check_head(trace.layers[layer], head)
        self.summary = widgets.HTML()
        self.token_html = widgets.HTML()
        self.curve_image = widgets.Image(format="png")
        self.budget_image = widgets.Image(format="png")
        self.map_image = widgets.Image(format="png")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.layer_slider, self.head_dropdown]),
                self.summary,
                self.token_html,
                widgets.HBox([self.curve_image, self.budget_image]),
                self.map_image,
            ]
        )
        self.widget.add_class("rk-decision-explorer")
        self.layer_slider.observe(self._on_layer, names="value")
        self.head_dropdown.observe(self._on_head, names="value")
        self._render(layer_changed=True)

    # ------------------------------------------------------------------ state
    @property
    def layer(self) -> int:
        """Index of the displayed decision in ``trace.layers``; setting it moves the slider."""
        return int(self.layer_slider.value)

    @layer.setter
    def layer(self, value: int) -> None:
        self.layer_slider.value = self._check_layer(value)

    @property
    def head(self) -> int:
        """The displayed kept-set owner (KV head for ``gqa="group"``); setting it moves the dropdown."""
        return int(self.head_dropdown.value)

    @head.setter
    def head(self, value: int) -> None:
        self.head_dropdown.value = self._check_head(self.decision, value)

    @property
    def decision(self) -> LayerDecision:
        """The displayed layer's decision."""
        return self.trace.layers[self.layer]

    @property
    def kept_positions(self) -> np.ndarray:
        """``(n_kept,)`` prompt positions the displayed head keeps, window included, ascending."""
        return np.asarray(self.decision.kept[self.head])

    @property
    def token_classes(self) -> list[str]:
        """``L`` class names of the displayed tokens (``rk-sink``, ``rk-kept``, ``rk-evicted``, ``rk-window``)."""
        return token_classes(self.decision, self.head)

    @property
    def is_full_layer(self) -> bool:
        """True when the displayed layer is a full layer (never pruned, budget 100%)."""
        return bool(self.decision.full_layer)

    @property
    def sink_positions(self) -> np.ndarray:
        """``(m,)`` the sink positions ``0 .. m - 1`` (empty for a full layer or a policy without sinks)."""
        return np.flatnonzero(np.array(self.token_classes) == SINK)

    @property
    def evicted_positions(self) -> np.ndarray:
        """``(n_evicted,)`` prompt positions the displayed head evicted, ascending (``n_evicted`` is ``e*``).

        The same set as ``decision.candidate_positions()[head, :e*]`` (the first ``e*`` in eviction order).
        """
        return np.flatnonzero(np.array(self.token_classes) == EVICTED)

    @property
    def window_positions(self) -> np.ndarray:
        """``(w,)`` the protected window positions ``L - w .. L - 1``, ascending."""
        return np.flatnonzero(np.array(self.token_classes) == WINDOW)

    @property
    def cut(self) -> int:
        """``e*`` of the displayed layer (candidates evicted per head)."""
        return int(self.decision.n_evicted)

    @property
    def curve(self) -> np.ndarray:
        """``(n,)`` the displayed layer's ratio curve."""
        return decision_curve(self.decision)

    @property
    def budgets(self) -> np.ndarray:
        """``(num_layers,)`` every layer's budget (what the bar chart shows)."""
        return self.trace.budgets

    @property
    def tokens_html(self) -> str:
        """The HTML currently shown for the prompt."""
        return self.token_html.value

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"DecisionExplorer(layer={self.layer}, head={self.head}, {self.trace!r})"

    # ------------------------------------------------------------------ internals
    def _check_layer(self, layer: int) -> int:
        if not 0 <= int(layer) < len(self.trace.layers):
            raise ValueError(f"layer index {layer} is out of range: the trace has {len(self.trace.layers)} layers")
        return int(layer)

    @staticmethod
    def _check_head(decision: LayerDecision, head: int) -> int:
        if not 0 <= int(head) < decision.num_heads:
            raise ValueError(
                f"head {head} is out of range: layer {decision.layer} has {decision.num_heads} kept sets "
                f"(KV heads for gqa='group', query heads for gqa='expand')"
            )
        return int(head)

    @staticmethod
    def _head_options(decision: LayerDecision) -> list[tuple[str, int]]:
        return [(head_label(decision, h), h) for h in range(decision.num_heads)]

    def _on_layer(self, change: dict[str, Any]) -> None:
        decision = self.decision
        options = self._head_options(decision)
        if [o[1] for o in options] != [o[1] for o in self.head_dropdown.options]:
            # A layer with another head count: rebuild the dropdown without rendering twice.
            self._updating = True
            try:
                head = min(self.head, decision.num_heads - 1)
                self.head_dropdown.options = options
                self.head_dropdown.value = head
            finally:
                self._updating = False
        self._render(layer_changed=True)

    def _on_head(self, change: dict[str, Any]) -> None:
        if not self._updating:
            self._render(layer_changed=False)

    def _fates(self) -> np.ndarray:
        """``(num_layers, L)`` the selected head's fate in every layer: 0 evicted, 1 kept, 2 window, 3 sink."""
        code = {EVICTED: 0, KEPT: 1, WINDOW: 2, SINK: 3}
        rows = []
        for d in self.trace.layers:
            head = min(self.head, d.num_heads - 1)
            rows.append([code[c] for c in token_classes(d, head)])
        return np.array(rows, dtype=np.int8)

    def summary_html(self) -> str:
        """The sentence above the tokens (every string from the trace escaped)."""
        d = self.decision
        labels = layer_labels(self.trace)
        layer = html.escape(labels[self.layer])
        mean = f"Mean budget over {len(self.trace.layers)} layers: {self.trace.mean_budget:.1%}"
        n_full = int(full_layer_mask(self.trace).sum())
        mean += f" (full layers counted at 100%: {n_full})." if n_full else "."
        if d.full_layer:
            return (
                f'<b>layer {layer}</b> ({html.escape(str(d.policy))}): <span class="rk-full-layer"><b>{FULL_LAYER}'
                f"</b></span>: keeps all <b>{d.prompt_len}</b> of {d.prompt_len} rows (budget <b>100%</b>); "
                f"nothing is decided here, the cache is left untouched. {mean}"
            )
        threshold = "" if d.threshold is None else f", threshold {d.threshold:g}"
        sinks = (
            f"m = {d.sinks} sinks ({html.escape(sink_label(d))}); " if d.sinks else "no sinks; "
        )
        window = f"window w = {d.window} protected. " if d.window else "no protected window. "
        return (
            f"<b>layer {layer}</b> ({html.escape(str(d.policy))}, ranking {html.escape(str(d.ranking))}{threshold}): "
            f"keeps <b>{d.n_kept}</b> of {d.prompt_len} rows per head (budget <b>{d.budget:.1%}</b>); "
            f"evicted e* = {d.n_evicted} of n = {d.n_candidates} candidates; {sinks}{window}{mean}"
        )

    def _render(self, layer_changed: bool) -> None:
        d, head = self.decision, self.head
        labels = layer_labels(self.trace)
        self.summary.value = self.summary_html()
        self.token_html.value = render_tokens(self.tokens, d, head)
        self.map_image.value = plots.figure_png(
            lambda ax: plots.plot_kept_map(ax, self._fates(), highlight=self.layer, labels=labels),
            size=(10.0, 2.6),
        )
        if layer_changed:
            curve = self.curve
            title = FULL_LAYER if d.full_layer else "halting curve"
            self.curve_image.value = plots.figure_png(
                lambda ax: plots.plot_ratio_curve(ax, curve, d.threshold, d.n_evicted, title=title)
            )
            self.budget_image.value = plots.figure_png(
                lambda ax: plots.plot_budgets(
                    ax,
                    self.budgets,
                    labels=labels,
                    highlight=self.layer,
                    full=full_layer_mask(self.trace),
                    title="budget per layer (this layer in orange)",
                )
            )
