"""DecisionExplorer: driving the controls changes what is displayed, to the right layer's and head's decision.

The default synthetic trace is the paper's preset: layers 0 and 1 are full layers, the other layers keep the
4 sinks (their own colour, outside the metric) and evict the oldest candidates. Every preset is checked:
the displayed classes are compared with each decision, position by position, through
``decision.candidate_positions()`` (candidate index + sinks), never by assuming index == position.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.policies import PRESETS

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import DecisionExplorer, classes_by_position  # noqa: E402
from refreekv_edu.widgets.explorer import decision_curve  # noqa: E402
from refreekv_edu.widgets.token_view import KEPT_CLASSES  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def displayed(explorer, *classes):
    """Positions the HTML shows with any of ``classes``, read back from the rendered spans."""
    parsed = classes_by_position(explorer.tokens_html)
    return np.array(sorted(p for p, c in parsed.items() if c & set(classes)), dtype=np.int64)


def displayed_kept(explorer):
    return displayed(explorer, *KEPT_CLASSES)


def check_shows_decision(ex, d, head):
    """The rendered spans say exactly what ``d`` decided for ``head``."""
    np.testing.assert_array_equal(ex.kept_positions, d.kept[head])
    np.testing.assert_array_equal(displayed_kept(ex), d.kept[head])
    if d.full_layer:
        np.testing.assert_array_equal(displayed(ex, "rk-kept"), np.arange(d.prompt_len))
        assert displayed(ex, "rk-sink", "rk-window", "rk-evicted").size == 0
        return
    np.testing.assert_array_equal(displayed(ex, "rk-sink"), np.arange(d.sinks))
    np.testing.assert_array_equal(displayed(ex, "rk-window"), np.arange(d.prompt_len - d.window, d.prompt_len))
    evicted = np.sort(d.candidate_positions()[head, : d.n_evicted])
    np.testing.assert_array_equal(displayed(ex, "rk-evicted"), evicted)
    np.testing.assert_array_equal(ex.evicted_positions, evicted)
    kept_candidates = np.sort(d.candidate_positions()[head, d.n_evicted :])
    np.testing.assert_array_equal(displayed(ex, "rk-kept"), kept_candidates)


def test_initial_state_shows_the_full_layer_0(trace):
    ex = DecisionExplorer(trace)
    d = trace.layers[0]
    assert d.full_layer and ex.is_full_layer and (ex.layer, ex.head, ex.cut) == (0, 0, 0)
    check_shows_decision(ex, d, 0)
    assert "full layer: never pruned (paper, Appendix B)" in ex.summary.value
    assert "full layer: never pruned (paper, Appendix B)" in ex.tokens_html  # the legend says it too
    assert "budget <b>100%</b>" in ex.summary.value
    assert ex.budgets[0] == ex.budgets[1] == 1.0
    np.testing.assert_array_equal(ex.budgets, trace.budgets)
    assert ex.curve.size == 0
    for image in (ex.curve_image, ex.budget_image, ex.map_image):
        assert bytes(image.value).startswith(PNG)


def test_moving_the_layer_slider_shows_that_layers_decision(trace):
    ex = DecisionExplorer(trace)
    html_before, curve_before = ex.tokens_html, ex.curve_image.value
    target = int(np.argmin(trace.budgets))  # a pruned layer: its kept set differs from the full layer 0's
    assert not trace.layers[target].full_layer
    ex.layer_slider.value = target
    d = trace.layers[target]
    assert ex.layer == target and ex.decision is d and ex.cut == d.n_evicted and not ex.is_full_layer
    check_shows_decision(ex, d, 0)
    np.testing.assert_array_equal(ex.sink_positions, [0, 1, 2, 3])
    assert ex.window_positions.size == 0  # the paper protects no window
    assert ex.tokens_html != html_before and ex.curve_image.value != curve_before
    assert f"keeps <b>{d.n_kept}</b> of 48 rows" in ex.summary.value
    assert f"evicted e* = {d.n_evicted} of n = 44" in ex.summary.value
    assert "m = 4 sinks (sink, kept, outside the metric)" in ex.summary.value
    assert "sink, kept, outside the metric" in ex.tokens_html
    assert "full layer" not in ex.tokens_html
    np.testing.assert_array_equal(ex.curve, d.curve)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_layer_and_head_of_every_preset_is_shown_as_decided(preset):
    trace = make_trace(policy=rk.ReFreeKV.preset(preset))
    ex = DecisionExplorer(trace)
    for layer, d in enumerate(trace.layers):
        ex.layer = layer
        for head in range(d.num_heads):
            ex.head = head
            check_shows_decision(ex, d, head)
    fates = ex._fates()
    assert fates.shape == (6, 48)
    full = [i for i, d in enumerate(trace.layers) if d.full_layer]
    assert full == list(PRESETS[preset]["full_layers"])
    assert (fates[full] == 1).all()


def test_sinks_in_metric_say_so():
    trace = make_trace(policy=rk.ReFreeKV.preset("sinks-in-metric"))
    ex = DecisionExplorer(trace, layer=3)
    assert "sink, kept, counted in the metric" in ex.tokens_html
    assert "counted in the metric" in ex.summary.value and "outside the metric" not in ex.tokens_html


def test_official_script_has_no_sinks_and_a_window():
    trace = make_trace(policy=rk.ReFreeKV.preset("official-script"))
    ex = DecisionExplorer(trace)
    assert not ex.is_full_layer and ex.sink_positions.size == 0
    np.testing.assert_array_equal(ex.window_positions, np.arange(40, 48))
    assert "no sinks" in ex.summary.value and "window w = 8 protected" in ex.summary.value
    assert "rk-sink" not in ex.tokens_html.split("</style>")[1]


def test_head_selector_switches_the_kept_set():
    trace = make_trace(policy=rk.ReFreeKV.preset("h2o-ranking"))  # per-KV-head orders: kept sets differ
    ex = DecisionExplorer(trace, layer=5)
    d = trace.layers[5]
    assert not np.array_equal(d.kept[0], d.kept[1]), "fixture should give the two KV heads different kept sets"
    assert [label for label, _ in ex.head_dropdown.options] == [
        "KV head 0 (query heads 0-2)",
        "KV head 1 (query heads 3-5)",
    ]
    ex.head_dropdown.value = 1
    check_shows_decision(ex, d, 1)
    ex.head = 0
    check_shows_decision(ex, d, 0)


def test_expand_mode_offers_every_query_head():
    trace = make_trace(num_layers=3, policy=rk.ReFreeKV(gqa="expand"))
    ex = DecisionExplorer(trace, layer=2)
    assert len(ex.head_dropdown.options) == 6
    ex.head = 5
    check_shows_decision(ex, trace.layers[2], 5)


def test_works_in_jupyter_display(trace):
    ex = DecisionExplorer(trace)
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id


def test_trace_from_json_without_tokens_and_curve_uses_placeholders_and_recomputes(trace):
    loaded = rk.Trace.from_json(trace.to_json())
    loaded.tokens = []
    loaded.layers[3].curve = np.zeros(0, dtype=np.float32)
    ex = DecisionExplorer(loaded)
    assert ">[0]</span>" in ex.tokens_html
    np.testing.assert_allclose(decision_curve(loaded.layers[3]), trace.layers[3].curve, atol=1e-6)
    # The sinks-in-metric curve is recomputed with the sinks in every tail.
    sinks_in = make_trace(policy=rk.ReFreeKV.preset("sinks-in-metric"))
    stored = sinks_in.layers[4].curve.copy()
    sinks_in.layers[4].curve = np.zeros(0, dtype=np.float32)
    np.testing.assert_allclose(decision_curve(sinks_in.layers[4]), stored, atol=1e-6)


def test_trace_strings_are_escaped_in_the_html(trace):
    """Issue 14: a trace is data (it may come from a file); nothing in it may become markup."""
    evil = rk.Trace.from_json(trace.to_json())
    evil.tokens[5] = "<script>alert('token')</script>"
    evil.tokens[6] = '<img src=x onerror="alert(1)">'
    for d in evil.layers:
        d.policy = "<script>alert('policy')</script>"
        d.ranking = "<img src=x onerror=alert(2)>"
    evil.layers[3].layer = "<b onmouseover=alert(3)>3</b>"
    ex = DecisionExplorer(evil)
    shown = []
    for layer in (0, 3):
        ex.layer = layer
        shown.append(ex.summary.value + ex.tokens_html)
    text = "\n".join(shown)
    for raw in ("<script", "<img", "<b onmouseover"):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(&#x27;token&#x27;)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "&lt;script&gt;alert(&#x27;policy&#x27;)&lt;/script&gt;" in text
    assert "ranking &lt;img src=x onerror=alert(2)&gt;" in text
    assert "&lt;b onmouseover=alert(3)&gt;3&lt;/b&gt;" in text


def test_bad_input_is_explained(trace):
    with pytest.raises(TypeError, match="expected a refreekv_edu Trace"):
        DecisionExplorer(trace.layers[0])
    with pytest.raises(ValueError, match="no layer decisions"):
        DecisionExplorer(rk.Trace())
    bad = rk.Trace(layers=trace.layers, tokens=["x"] * 5)
    with pytest.raises(ValueError, match="5 tokens but its decisions cover 48"):
        DecisionExplorer(bad)
    ex = DecisionExplorer(trace)
    with pytest.raises(ValueError, match="the trace has 6 layers"):
        ex.layer = 6
    with pytest.raises(ValueError, match="head 2 is out of range"):
        ex.head = 2
