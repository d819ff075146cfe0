"""``StepThrough``: replay one layer's halting rule, evicting candidates one at a time.

At step ``e`` every head has evicted its ``e`` least important candidates. The widget shows which
tokens are gone (and which one goes next), each query head's retained norm ``r_h(e)`` falling, and
``ratio(e) = (R(0) - R(e)) / R(0)`` rising towards the threshold. ReFreeKV stops at the last step whose
ratio is still within the threshold, ``e*``; stepping past it shows the step where the ratio crosses.

The candidates are the positions between the ``m`` sinks and the protected window; ``decision.order``
holds candidate *indices*, and ``decision.candidate_positions()`` (``order + m``) the prompt positions the
widget colours. The sinks are never evicted; in the paper they are outside the metric, in the
``"sinks-in-metric"`` ablation their attention sits in every tail sum (so ``R(e)`` never falls below it).
Any preset works (recency: one order for every head; h2o: one order per KV head); a full layer has nothing
to step through and is refused with a message.

The numbers are recomputed here from the decision's stored ``last_attn``, ``sink_attn`` and ``order`` in
plain numpy, as written in the paper (a reverse scan of squared attention), so the widget doubles as a check
of the decision: at the decision's own threshold, :attr:`StepThrough.cut` equals ``decision.n_evicted``
(and ``decision.cut(threshold)`` at any other).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..decision import LayerDecision
from ..halting import check_threshold, cut_from_ratio, expand_order, ratio_from_norms
from ..policies import PRESETS
from . import plots
from .deps import require_ipywidgets
from .token_view import (
    EVICTED,
    FULL_LAYER,
    KEPT,
    NEXT,
    SINK,
    WINDOW,
    check_head,
    placeholder_tokens,
    render_tokens,
    sink_label,
)

#: The threshold replayed for decisions that have none (fixed budgets): the paper's T.
PAPER_THRESHOLD = float(PRESETS["paper"]["threshold"])


def retained_norms(decision: LayerDecision) -> np.ndarray:
    """``(Hq, n)`` each query head's retained norm ``r_h(e) = sqrt(sum_{k >= e} a_h[order_h[k]]^2)``, ``e = 0 .. n-1``.

    In the ``"sinks-in-metric"`` ablation the sinks' squared attention ``sum_j sink_attn[h, j]^2`` is added
    to every tail: they are never evicted, but they count.
    """
    a = np.asarray(decision.last_attn, dtype=np.float64)
    order = expand_order(np.asarray(decision.order), a.shape[0])
    a_sorted = np.take_along_axis(a, order, axis=1)
    # Reverse scan (sum of the tail), never total - prefix: the latter can go negative and sqrt gives NaN.
    tail = np.cumsum((a_sorted**2)[:, ::-1], axis=1)[:, ::-1]
    if decision.sinks_in_metric and decision.sinks:
        tail = tail + (np.asarray(decision.sink_attn, dtype=np.float64) ** 2).sum(axis=1, keepdims=True)
    return np.sqrt(tail)


class StepThrough:
    """Evict one candidate per head at a time and watch the halting rule decide when to stop.

    Args:
        decision: one layer's decision (e.g. ``trace.layers[3]``); it must have candidates (``L > m + w``, not
            a full layer).
        tokens: the prompt's display strings (``trace.tokens``); default ``[0], [1], ...``.
        head: the kept-set owner whose tokens are shown (KV head for ``gqa="group"``).
        threshold: the halting threshold to replay; default the decision's own (the paper's 0.01 for fixed
            budgets).

    Controls: ``prev_button``, ``next_button``, ``cut_button`` (jump to ``e*``), ``play`` (animates in the
    browser) and ``step_slider``, all bound to :attr:`step`.

    Example:
        >>> from refreekv_edu.widgets import StepThrough, synthetic_trace
        >>> st = StepThrough(synthetic_trace().layers[2])       # layers 0 and 1 are full layers: nothing to step
        >>> st.next_button.click(); st.step
        1
        >>> st.step = st.cut; st.halted, st.ratio <= st.threshold
        (True, True)
    """

    def __init__(
        self,
        decision: LayerDecision,
        tokens: list[str] | None = None,
        head: int = 0,
        threshold: float | None = None,
    ) -> None:
        widgets = require_ipywidgets()
        if not isinstance(decision, LayerDecision):
            raise TypeError(
                f"StepThrough takes one LayerDecision (e.g. trace.layers[0]), got {type(decision).__name__}; "
                "for a whole trace use DecisionExplorer"
            )
        n = decision.n_candidates
        if decision.full_layer:
            raise ValueError(
                f"layer {decision.layer} is a {FULL_LAYER}: it keeps all {decision.prompt_len} rows and decides "
                "nothing, so there is nothing to step through; pick a pruned layer (e.g. trace.layers[2])"
            )
        if n == 0 or np.asarray(decision.last_attn).size == 0:
            raise ValueError(
                f"this decision has no candidates to evict (prompt of {decision.prompt_len} positions, "
                f"{decision.sinks} sinks, window {decision.window}); use a prompt longer than sinks + window"
            )
        self.decision = decision
        self.tokens = placeholder_tokens(decision.prompt_len) if not tokens else list(tokens)
        if len(self.tokens) != decision.prompt_len:
            raise ValueError(f"got {len(self.tokens)} tokens for a prompt of {decision.prompt_len} positions")
        self.head = check_head(decision, head)
        default = decision.threshold if decision.threshold is not None else PAPER_THRESHOLD
        self.threshold = check_threshold(default if threshold is None else threshold)
        self.norms = retained_norms(decision)  # (Hq, n)
        self.mean_norms = self.norms.mean(axis=0)  # (n,) R(e)
        self.curve = ratio_from_norms(self.mean_norms)  # (n,) ratio(e)
        self.cut = cut_from_ratio(self.curve, self.threshold)

        self.step_slider = widgets.IntSlider(value=0, min=0, max=n - 1, description="evicted e")
        self.play = widgets.Play(value=0, min=0, max=n - 1, step=1, interval=500, description="Play")
        widgets.jslink((self.play, "value"), (self.step_slider, "value"))  # animation runs in the browser
        self.prev_button = widgets.Button(description="◀ Prev", tooltip="put back the last evicted candidate")
        self.next_button = widgets.Button(description="Next ▶", tooltip="evict the next least important candidate")
        self.cut_button = widgets.Button(description="Jump to e*", tooltip="where ReFreeKV stops")
        self.status = widgets.HTML()
        self.token_html = widgets.HTML()
        self.curve_image = widgets.Image(format="png")
        self.norm_image = widgets.Image(format="png")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.prev_button, self.next_button, self.play, self.step_slider, self.cut_button]),
                self.status,
                self.token_html,
                widgets.HBox([self.curve_image, self.norm_image]),
            ]
        )
        self.widget.add_class("rk-step-through")
        self.prev_button.on_click(lambda _: self._move(-1))
        self.next_button.on_click(lambda _: self._move(+1))
        self.cut_button.on_click(lambda _: setattr(self, "step", self.cut))
        self.step_slider.observe(lambda _: self._render(), names="value")
        self._render()

    # ------------------------------------------------------------------ state
    @property
    def n(self) -> int:
        """Number of candidates per head."""
        return self.decision.n_candidates

    @property
    def step(self) -> int:
        """``e``: candidates evicted per head so far (0 .. n-1); setting it moves the slider."""
        return int(self.step_slider.value)

    @step.setter
    def step(self, value: int) -> None:
        if not 0 <= int(value) <= self.n - 1:
            raise ValueError(f"step must lie in 0..{self.n - 1} (at least one candidate always stays), got {value}")
        self.step_slider.value = int(value)

    @property
    def ratio(self) -> float:
        """``ratio(e)`` at the current step."""
        return float(self.curve[self.step])

    @property
    def retained_norm(self) -> float:
        """``R(e)``, the mean over query heads of the retained norm at the current step."""
        return float(self.mean_norms[self.step])

    @property
    def positions(self) -> np.ndarray:
        """``(n,)`` the shown head's candidates as prompt positions, least important first (``order + m``)."""
        return np.asarray(self.decision.candidate_positions()[self.head], dtype=np.int64)

    @property
    def evicted_positions(self) -> np.ndarray:
        """``(e,)`` int64 prompt positions the shown head has evicted at step ``e``, least important first."""
        return self.positions[: self.step]

    @property
    def next_position(self) -> int | None:
        """The position the shown head evicts next (``None`` at the last step: one candidate always stays)."""
        return int(self.positions[self.step]) if self.step < self.n - 1 else None

    @property
    def crossing_step(self) -> int | None:
        """The first ``e`` whose ratio exceeds the threshold (``e* + 1``), ``None`` if no step does."""
        return self.cut + 1 if self.cut + 1 < self.n else None

    @property
    def halted(self) -> bool:
        """True once the current step has reached ``e*``: ReFreeKV evicts no further."""
        return self.step >= self.cut

    @property
    def token_classes(self) -> list[str]:
        """``L`` class names of the tokens shown at this step."""
        d = self.decision
        classes = [SINK] * d.sinks + [KEPT] * self.n + [WINDOW] * (d.prompt_len - d.sinks - self.n)
        for pos in self.evicted_positions:
            classes[int(pos)] = EVICTED
        return classes

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"StepThrough(step={self.step}, cut={self.cut}, threshold={self.threshold}, {self.decision!r})"

    # ------------------------------------------------------------------ internals
    def _move(self, delta: int) -> None:
        self.step = min(max(self.step + delta, 0), self.n - 1)

    def status_text(self) -> str:
        """The sentence under the controls: where the current step stands against the threshold."""
        e, t = self.step, self.threshold
        d = self.decision
        head_line = (
            f"Step e = {e} of n = {self.n}: every head has evicted its {e} least important candidates. "
            f"R(e) = {self.retained_norm:.4f} (R(0) = {self.mean_norms[0]:.4f}), ratio(e) = {self.ratio:.4f}. "
        )
        if d.sinks:
            head_line += f"The m = {d.sinks} sinks stay ({sink_label(d)}). "
        if e < self.cut:
            verdict = f"ratio(e) ≤ threshold {t:g}: keep evicting."
        elif e == self.cut and self.crossing_step is None:
            verdict = f"<b>halt at e* = {self.cut}</b>: ratio stays ≤ {t:g}, but one candidate always stays."
        elif e == self.cut:
            nxt = float(self.curve[self.cut + 1])
            verdict = (
                f"<b>halt at e* = {self.cut}</b>: ratio(e) ≤ {t:g}, and the next eviction would make "
                f"ratio({self.cut + 1}) = {nxt:.4f} > {t:g}."
            )
        else:
            verdict = (
                f"past the cut: ratio crossed the threshold {t:g} at e = {self.crossing_step}; "
                f"ReFreeKV stopped at e* = {self.cut}."
            )
        return head_line + verdict

    def _render(self) -> None:
        self.status.value = self.status_text()
        extra = {} if self.next_position is None else {self.next_position: NEXT}
        self.token_html.value = render_tokens(
            self.tokens, self.decision, self.head, classes=self.token_classes, extra=extra
        )
        self.curve_image.value = plots.figure_png(
            lambda ax: plots.plot_ratio_curve(ax, self.curve, self.threshold, self.cut, step=self.step)
        )
        self.norm_image.value = plots.figure_png(
            lambda ax: plots.plot_retained_norms(ax, self.norms, self.step, self.cut)
        )
