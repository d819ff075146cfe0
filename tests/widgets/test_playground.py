"""ThresholdPlayground: the slider re-decides every layer exactly as the policy would at that threshold.

Checked for every preset: re-deciding a stored trace at another threshold (``decision.cut``, which honours
``sinks_in_metric``) equals running the same preset at that threshold; full layers stay at 100%; the
fixed-budget baselines keep ``decision.protected`` rows plus candidates on the trace's skeleton.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.policies import PRESETS

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import ThresholdPlayground, budgets_at_threshold  # noqa: E402
from refreekv_edu.widgets.playground import fixed_budget_rows  # noqa: E402


@pytest.mark.parametrize("preset", list(PRESETS))
def test_budgets_at_the_traces_own_threshold_are_the_traces_budgets(preset):
    trace = make_trace(policy=rk.ReFreeKV.preset(preset))
    cuts, budgets = budgets_at_threshold(trace, PRESETS[preset]["threshold"])
    np.testing.assert_array_equal(cuts, [d.n_evicted for d in trace.layers])
    np.testing.assert_allclose(budgets, trace.budgets)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_redeciding_matches_running_the_policy_at_that_threshold(preset):
    """Re-deciding a stored trace at 0.15 == deciding the same inputs with the preset at threshold 0.15."""
    redecided = budgets_at_threshold(make_trace(seed=1, policy=rk.ReFreeKV.preset(preset)), 0.15)[1]
    direct = make_trace(seed=1, policy=rk.ReFreeKV.preset(preset, threshold=0.15)).budgets
    np.testing.assert_allclose(redecided, direct)
    assert not np.allclose(direct, make_trace(seed=1, policy=rk.ReFreeKV.preset(preset)).budgets)


def test_sinks_in_metric_redecides_with_the_sinks_in_the_norm():
    """The ablation's re-decision differs from re-deciding the same signal without the sinks."""
    trace = make_trace(seed=1, policy=rk.ReFreeKV.preset("sinks-in-metric"))
    with_sinks = budgets_at_threshold(trace, 0.05)[1]
    for d in trace.layers:
        d.sinks_in_metric = False
    without = budgets_at_threshold(trace, 0.05)[1]
    assert np.all(with_sinks <= without) and not np.allclose(with_sinks, without)


def test_full_layers_stay_whole_at_every_threshold(trace):
    for t in (0.0, 0.01, 0.2, 0.99):
        cuts, budgets = budgets_at_threshold(trace, t)
        assert cuts[0] == cuts[1] == 0 and budgets[0] == budgets[1] == 1.0


def test_moving_the_slider_updates_budgets_and_plots(trace):
    pg = ThresholdPlayground(trace)
    assert pg.threshold == pytest.approx(0.01)  # the paper's T, read from the trace
    np.testing.assert_allclose(pg.budgets, trace.budgets)
    image_before, mean_before = pg.budget_image.value, pg.mean_budget
    pg.threshold_slider.value = 0.2
    np.testing.assert_allclose(pg.budgets, budgets_at_threshold(trace, 0.2)[1])
    assert pg.mean_budget == pytest.approx(pg.budgets.mean()) and pg.mean_budget < mean_before
    assert pg.budget_image.value != image_before
    assert "threshold <b>0.200</b>" in pg.summary.value
    assert "Full layers 0, 1 keep 100% (full layer: never pruned (paper, Appendix B))" in pg.summary.value
    assert pg.table.value.count("<tr>") == 1 + len(trace.layers)
    assert pg.table.value.count("<td>full</td>") == 2


def test_budgets_never_grow_with_the_threshold(trace):
    previous = None
    for t in np.linspace(0, 0.3, 13):
        budgets = budgets_at_threshold(trace, t)[1]
        if previous is not None:
            assert np.all(budgets <= previous + 1e-12)
        previous = budgets
    assert np.all(np.diff(ThresholdPlayground(trace).sweep_mean_budgets) <= 1e-12)


def test_fixed_budget_baselines_keep_the_protected_rows_and_the_full_layers(trace):
    pg = ThresholdPlayground(trace, baselines=(0.25, 0.5))
    per_layer = pg.baseline_budgets
    np.testing.assert_allclose(per_layer["fixed 50%"], [1, 1, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(per_layer["fixed 25%"], [1, 1, 0.25, 0.25, 0.25, 0.25])
    assert pg.baselines["fixed 50%"] == pytest.approx(4 / 6)
    # The fair baseline keeps ceil(matched * L) rows in each pruned layer: at least ReFreeKV's mean there.
    matched = trace.budgets[2:].mean()
    assert pg.matched_budget == pytest.approx(matched)
    np.testing.assert_allclose(per_layer["fixed @ same mean"][2:], math.ceil(matched * 48 - 1e-9) / 48)
    assert pg.baselines["fixed @ same mean"] >= pg.mean_budget - 1e-12
    # A fixed budget smaller than the protected rows still keeps them and one candidate: m + 1 rows.
    assert fixed_budget_rows(0.01, trace.layers[2]) == pytest.approx(5 / 48)
    official = make_trace(policy=rk.ReFreeKV.preset("official-script")).layers[0]
    assert official.protected == 8 and fixed_budget_rows(0.01, official) == pytest.approx(9 / 48)


def test_works_for_every_preset():
    for preset in PRESETS:
        trace = make_trace(policy=rk.ReFreeKV.preset(preset))
        pg = ThresholdPlayground(trace)
        assert pg.threshold == pytest.approx(PRESETS[preset]["threshold"])
        np.testing.assert_allclose(pg.budgets, trace.budgets)


def test_layer_labels_are_escaped(trace):
    evil = rk.Trace.from_json(trace.to_json())
    evil.layers[2].layer = "<script>alert(1)</script>"
    pg = ThresholdPlayground(evil)
    assert "<script>alert" not in pg.table.value and "&lt;script&gt;alert(1)&lt;/script&gt;" in pg.table.value


def test_bad_input_is_explained(trace):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        ThresholdPlayground(trace, baselines=(1.5,))
    pg = ThresholdPlayground(trace)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        pg.threshold = -0.1
    with pytest.raises(ValueError, match="beyond the slider's range"):
        pg.threshold = 0.9
    stripped = rk.Trace.from_json(trace.to_json())
    stripped.layers[2].last_attn = np.zeros((6, 0), dtype=np.float32)
    with pytest.raises(ValueError, match="stores no last_attn"):
        budgets_at_threshold(stripped, 0.1)
