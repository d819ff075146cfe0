"""DecisionExplorer: driving the controls changes what is displayed, to the right layer's and head's decision."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import DecisionExplorer, classes_by_position  # noqa: E402
from refreekv_edu.widgets.explorer import decision_curve  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def displayed_kept(explorer):
    """Positions the HTML shows as kept or window, read back from the rendered spans."""
    parsed = classes_by_position(explorer.tokens_html)
    return np.array(sorted(p for p, c in parsed.items() if c & {"rk-kept", "rk-window"}))


def test_initial_state_shows_layer_0_head_0(trace):
    ex = DecisionExplorer(trace)
    d = trace.layers[0]
    assert (ex.layer, ex.head, ex.cut) == (0, 0, d.n_evicted)
    np.testing.assert_array_equal(ex.kept_positions, d.kept[0])
    np.testing.assert_array_equal(displayed_kept(ex), d.kept[0])
    np.testing.assert_array_equal(ex.window_positions, np.arange(40, 48))
    assert len(ex.evicted_positions) == d.n_evicted
    np.testing.assert_array_equal(ex.budgets, trace.budgets)
    for image in (ex.curve_image, ex.budget_image, ex.map_image):
        assert bytes(image.value).startswith(PNG)


def test_moving_the_layer_slider_shows_that_layers_decision(trace):
    ex = DecisionExplorer(trace)
    html_before, curve_before = ex.tokens_html, ex.curve_image.value
    target = int(np.argmax(trace.budgets))  # a layer whose kept set differs from layer 0's
    assert not np.array_equal(trace.layers[target].kept[0], trace.layers[0].kept[0])
    ex.layer_slider.value = target
    d = trace.layers[target]
    assert ex.layer == target and ex.decision is d and ex.cut == d.n_evicted
    np.testing.assert_array_equal(ex.kept_positions, d.kept[0])
    np.testing.assert_array_equal(displayed_kept(ex), d.kept[0])
    assert ex.tokens_html != html_before and ex.curve_image.value != curve_before
    assert f"keeps <b>{d.n_kept}</b> of 48 rows" in ex.summary.value
    assert f"evicted e* = {d.n_evicted} of n = 40" in ex.summary.value
    np.testing.assert_array_equal(ex.curve, d.curve)


def test_head_selector_switches_the_kept_set(trace):
    ex = DecisionExplorer(trace, layer=5)
    d = trace.layers[5]
    assert not np.array_equal(d.kept[0], d.kept[1]), "fixture should give the two KV heads different kept sets"
    assert [label for label, _ in ex.head_dropdown.options] == [
        "KV head 0 (query heads 0-2)",
        "KV head 1 (query heads 3-5)",
    ]
    ex.head_dropdown.value = 1
    np.testing.assert_array_equal(displayed_kept(ex), d.kept[1])
    ex.head = 0
    np.testing.assert_array_equal(displayed_kept(ex), d.kept[0])


def test_expand_mode_offers_every_query_head():
    trace = make_trace(num_layers=2, policy=rk.ReFreeKV(gqa="expand"))
    ex = DecisionExplorer(trace)
    assert len(ex.head_dropdown.options) == 6
    ex.head = 5
    np.testing.assert_array_equal(displayed_kept(ex), trace.layers[0].kept[5])


def test_works_in_jupyter_display(trace):
    ex = DecisionExplorer(trace)
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id


def test_trace_from_json_without_tokens_and_curve_uses_placeholders_and_recomputes(trace):
    loaded = rk.Trace.from_json(trace.to_json())
    loaded.tokens = []
    loaded.layers[0].curve = np.zeros(0, dtype=np.float32)
    ex = DecisionExplorer(loaded)
    assert ">[0]</span>" in ex.tokens_html
    np.testing.assert_allclose(decision_curve(loaded.layers[0]), trace.layers[0].curve, atol=1e-6)


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
