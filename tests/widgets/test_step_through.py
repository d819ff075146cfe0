"""StepThrough: Prev/Next move one eviction at a time; the halting step matches the definition and the policy.

Candidate indices are mapped to prompt positions through ``decision.candidate_positions()`` (index + sinks);
every preset is replayed, the sinks-in-metric ablation with the sinks in every tail.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.policies import PRESETS

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import StepThrough, classes_by_position  # noqa: E402
from refreekv_edu.widgets.step_through import retained_norms  # noqa: E402


def pruned_layers(trace):
    return [d for d in trace.layers if not d.full_layer]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_retained_norms_match_the_definition(preset):
    d = make_trace(policy=rk.ReFreeKV.preset(preset)).layers[4]
    norms = retained_norms(d)
    g = d.group_size if d.order.shape[0] != d.last_attn.shape[0] else 1
    sinks = np.sum(d.sink_attn.astype(np.float64) ** 2, axis=1) if d.sinks_in_metric else np.zeros(d.last_attn.shape[0])
    for h in range(d.last_attn.shape[0]):
        for e in (0, 1, 7, d.n_candidates - 1):
            kept = d.order[h // g, e:]
            expected = np.sqrt(np.sum(d.last_attn[h, kept].astype(np.float64) ** 2) + sinks[h])
            assert norms[h, e] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_cut_equals_the_policy_decision_for_every_preset(preset):
    trace = make_trace(policy=rk.ReFreeKV.preset(preset))
    for d in pruned_layers(trace):
        st = StepThrough(d, tokens=trace.tokens)
        assert st.cut == d.n_evicted == d.cut(d.threshold)
        np.testing.assert_allclose(st.curve, d.curve, atol=2e-6)
        assert StepThrough(d, threshold=0.15).cut == d.cut(0.15)


def test_next_and_prev_evict_and_restore_positions_in_order():
    trace = make_trace(policy=rk.ReFreeKV.preset("h2o-ranking"))  # per-KV-head orders, 4 sinks, window 8
    d = trace.layers[3]
    positions = d.candidate_positions()[1]
    st = StepThrough(d, tokens=trace.tokens, head=1)
    assert st.step == 0 and st.evicted_positions.size == 0
    np.testing.assert_array_equal(st.positions, d.order[1] + 4)
    st.next_button.click()
    st.next_button.click()
    assert st.step == 2
    np.testing.assert_array_equal(st.evicted_positions, positions[:2])
    parsed = classes_by_position(st.token_html.value)
    assert {p for p, c in parsed.items() if "rk-evicted" in c} == set(positions[:2].tolist())
    assert {p for p, c in parsed.items() if "rk-sink" in c} == {0, 1, 2, 3}
    assert {p for p, c in parsed.items() if "rk-window" in c} == set(range(40, 48))
    assert parsed[int(positions[2])] == {"rk-kept", "rk-next"}
    assert st.next_position == int(positions[2])
    st.prev_button.click()
    assert st.step == 1
    st.prev_button.click()
    st.prev_button.click()  # clamps at 0
    assert st.step == 0
    assert st.retained_norm == pytest.approx(st.mean_norms[0])


def test_recency_evicts_the_oldest_candidates_first(trace):
    d = trace.layers[3]
    st = StepThrough(d, tokens=trace.tokens)
    st.step = 3
    np.testing.assert_array_equal(st.evicted_positions, [4, 5, 6])  # the sinks 0-3 are never candidates
    assert st.next_position == 7
    assert "The m = 4 sinks stay (sink, kept, outside the metric)" in st.status.value


def test_the_halting_step_and_the_crossing_are_shown(trace):
    d = next(d for d in pruned_layers(trace) if 0 < d.n_evicted < d.n_candidates - 1)
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
    assert f"crossed the threshold 0.01 at e = {st.crossing_step}" in st.status.value
    # Retained norm falls (never rises) as the steps go on.
    assert np.all(np.diff(st.mean_norms) <= 1e-12)


def test_sinks_in_metric_keeps_the_sinks_in_every_tail():
    d = make_trace(policy=rk.ReFreeKV.preset("sinks-in-metric")).layers[4]
    st = StepThrough(d)
    floor = np.sqrt(np.sum(d.sink_attn.astype(np.float64) ** 2, axis=1)).mean()
    assert st.mean_norms[-1] > floor > 0  # R(e) never falls below the sinks' share
    assert "sink, kept, counted in the metric" in st.status.value


def test_threshold_override_and_fixed_budget_decisions(trace):
    d = trace.layers[4]
    st = StepThrough(d, threshold=0.2)
    assert st.cut == d.cut(0.2) > d.n_evicted
    fixed = make_trace(num_layers=1, policy=rk.FixedBudget(budget=0.5)).layers[0]
    assert StepThrough(fixed).threshold == 0.01  # fixed budgets have no threshold: replay the paper's T


def test_bad_input_is_explained(trace):
    with pytest.raises(TypeError, match="use DecisionExplorer"):
        StepThrough(trace)
    with pytest.raises(ValueError, match=r"full layer: never pruned \(paper, Appendix B\)"):
        StepThrough(trace.layers[0])
    short = make_trace(num_layers=3, prompt_len=4).layers[2]
    with pytest.raises(ValueError, match="no candidates to evict"):
        StepThrough(short)
    st = StepThrough(trace.layers[2])
    with pytest.raises(ValueError, match="step must lie in 0..43"):
        st.step = 44
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        StepThrough(trace.layers[2], threshold=1.5)
