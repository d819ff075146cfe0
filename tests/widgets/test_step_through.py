"""StepThrough: Prev/Next move one eviction at a time; the halting step matches the definition and the policy."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.halting import halting_cut

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import StepThrough, classes_by_position  # noqa: E402
from refreekv_edu.widgets.step_through import retained_norms  # noqa: E402


def test_retained_norms_match_the_definition(trace):
    d = trace.layers[4]
    norms = retained_norms(d)
    g = d.group_size
    for h in range(d.last_attn.shape[0]):
        for e in (0, 1, 7, d.n_candidates - 1):
            kept = d.order[h // g, e:]
            assert norms[h, e] == pytest.approx(np.sqrt(np.sum(d.last_attn[h, kept].astype(np.float64) ** 2)), rel=1e-6)


def test_cut_equals_the_policy_decision_and_halting_cut(trace):
    for d in trace.layers:
        st = StepThrough(d, tokens=trace.tokens)
        assert st.cut == d.n_evicted == halting_cut(d.last_attn, d.order, d.threshold)
        np.testing.assert_allclose(st.curve, d.curve, atol=2e-6)


def test_next_and_prev_evict_and_restore_in_order(trace):
    d = trace.layers[0]
    st = StepThrough(d, tokens=trace.tokens, head=1)
    assert st.step == 0 and st.evicted_positions.size == 0
    st.next_button.click()
    st.next_button.click()
    assert st.step == 2
    np.testing.assert_array_equal(st.evicted_positions, d.order[1, :2])
    parsed = classes_by_position(st.token_html.value)
    assert {p for p, c in parsed.items() if "rk-evicted" in c} == set(d.order[1, :2].tolist())
    assert parsed[int(d.order[1, 2])] == {"rk-kept", "rk-next"}
    assert st.next_position == int(d.order[1, 2])
    st.prev_button.click()
    assert st.step == 1
    st.prev_button.click()
    st.prev_button.click()  # clamps at 0
    assert st.step == 0
    assert st.retained_norm == pytest.approx(st.mean_norms[0])


def test_the_halting_step_and_the_crossing_are_shown(trace):
    d = trace.layers[4]
    st = StepThrough(d, tokens=trace.tokens)
    st.step = st.cut - 1
    assert not st.halted and "keep evicting" in st.status.value
    st.cut_button.click()
    assert st.step == st.cut and st.halted
    assert st.ratio <= d.threshold
    assert f"halt at e* = {st.cut}" in st.status.value
    assert st.crossing_step == st.cut + 1
    st.next_button.click()
    assert st.step == st.crossing_step and st.ratio > d.threshold
    assert f"crossed the threshold 0.05 at e = {st.crossing_step}" in st.status.value
    # Retained norm falls (never rises) as the steps go on.
    assert np.all(np.diff(st.mean_norms) <= 1e-12)


def test_threshold_override_and_fixed_budget_decisions(trace):
    d = trace.layers[4]
    st = StepThrough(d, threshold=0.2)
    assert st.cut == halting_cut(d.last_attn, d.order, 0.2) > d.n_evicted
    fixed = make_trace(num_layers=1, policy=rk.FixedBudget(budget=0.5)).layers[0]
    assert StepThrough(fixed).threshold == 0.05  # fixed budgets have no threshold: replay the paper's default


def test_bad_input_is_explained(trace):
    with pytest.raises(TypeError, match="use DecisionExplorer"):
        StepThrough(trace)
    short = make_trace(num_layers=1, prompt_len=6).layers[0]
    with pytest.raises(ValueError, match="no candidates to evict"):
        StepThrough(short)
    st = StepThrough(trace.layers[0])
    with pytest.raises(ValueError, match="step must lie in 0..39"):
        st.step = 40
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        StepThrough(trace.layers[0], threshold=1.5)
