"""ThresholdPlayground: the slider re-decides every layer exactly as the policy would at that threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import ThresholdPlayground, budgets_at_threshold  # noqa: E402


def test_budgets_at_the_traces_own_threshold_are_the_traces_budgets(trace):
    cuts, budgets = budgets_at_threshold(trace, 0.05)
    np.testing.assert_array_equal(cuts, [d.n_evicted for d in trace.layers])
    np.testing.assert_allclose(budgets, trace.budgets)


def test_redeciding_matches_running_the_policy_at_that_threshold():
    """Re-deciding a stored trace at 0.15 == deciding the same inputs with ReFreeKV(threshold=0.15)."""
    redecided = budgets_at_threshold(make_trace(seed=1), 0.15)[1]
    direct = make_trace(seed=1, policy=rk.ReFreeKV(threshold=0.15)).budgets
    np.testing.assert_allclose(redecided, direct)
    assert not np.allclose(direct, make_trace(seed=1).budgets)


def test_moving_the_slider_updates_budgets_and_plots(trace):
    pg = ThresholdPlayground(trace)
    assert pg.threshold == pytest.approx(0.05)
    np.testing.assert_allclose(pg.budgets, trace.budgets)
    image_before, mean_before = pg.budget_image.value, pg.mean_budget
    pg.threshold_slider.value = 0.2
    np.testing.assert_allclose(pg.budgets, budgets_at_threshold(trace, 0.2)[1])
    assert pg.mean_budget == pytest.approx(pg.budgets.mean()) and pg.mean_budget < mean_before
    assert pg.budget_image.value != image_before
    assert "threshold <b>0.200</b>" in pg.summary.value
    assert pg.table.value.count("<tr>") == 1 + len(trace.layers)


def test_budgets_never_grow_with_the_threshold(trace):
    previous = None
    for t in np.linspace(0, 0.3, 13):
        budgets = budgets_at_threshold(trace, t)[1]
        if previous is not None:
            assert np.all(budgets <= previous + 1e-12)
        previous = budgets
    assert np.all(np.diff(ThresholdPlayground(trace).sweep_mean_budgets) <= 1e-12)


def test_fixed_budget_baselines(trace):
    pg = ThresholdPlayground(trace, baselines=(0.25, 0.5))
    base = pg.baselines
    assert base["fixed 50%"] == pytest.approx(24 / 48)
    assert base["fixed 25%"] == pytest.approx(12 / 48)
    # The fair baseline keeps ceil(mean * L) rows: at least ReFreeKV's mean, less than one row more.
    assert base["fixed @ same mean"] == pytest.approx(math.ceil(pg.mean_budget * 48 - 1e-9) / 48)


def test_bad_input_is_explained(trace):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        ThresholdPlayground(trace, baselines=(1.5,))
    pg = ThresholdPlayground(trace)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        pg.threshold = -0.1
    with pytest.raises(ValueError, match="beyond the slider's range"):
        pg.threshold = 0.9
    stripped = rk.Trace.from_json(trace.to_json())
    stripped.layers[0].last_attn = np.zeros((6, 0), dtype=np.float32)
    with pytest.raises(ValueError, match="stores no last_attn"):
        budgets_at_threshold(stripped, 0.1)
