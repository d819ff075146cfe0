"""The per-layer view of lost samples and the sweep's common sample set, checked on hand-made records."""

from __future__ import annotations

import numpy as np
import pytest

from refreekv_edu.eval.config import EvalConfig
from refreekv_edu.eval.layer_losses import layer_losses, layer_losses_finding, layer_losses_table
from refreekv_edu.eval.methods import parse_method
from refreekv_edu.eval.runner import Runner
from refreekv_edu.eval.sweep import sweep_groups, sweep_samples
from refreekv_edu.eval.tasks import make_samples


def rec(sid, method, score, budgets=None, threshold=None, kind=None, budget_target=None, exact=0.0):
    return {"sample_id": sid, "method": method, "score": score, "layer_budgets": budgets, "full_layers": [0, 1],
            "threshold": threshold, "kind": kind or ("full" if method == "full" else "refreekv"),
            "budget_target": budget_target, "mean_budget": float(np.mean(budgets)) if budgets else 1.0,
            "exact_match_full": exact}


def test_layer_losses_split_by_outcome():
    records = [
        rec("a", "full", 1.0), rec("a", "paper", 0.0, [1, 1, 0.2, 0.6], 0.01),  # lost
        rec("b", "full", 1.0), rec("b", "paper", 1.0, [1, 1, 0.8, 0.6], 0.01),  # kept
        rec("c", "full", 0.0), rec("c", "paper", 0.0, [1, 1, 0.4, 0.2], 0.01),  # kept (not below the full cache)
        rec("a", "recency@matched", 1.0, [1, 1, 0.4, 0.4], kind="matched", budget_target=0.4),
    ]
    ll = layer_losses(records)
    assert ll.lost == ["a"] and ll.kept == ["b", "c"]
    np.testing.assert_allclose(ll.lost_budget, [1, 1, 0.2, 0.6])
    np.testing.assert_allclose(ll.kept_budget, [1, 1, 0.6, 0.4])
    assert ll.hardest(1) == [2]  # kept - lost = +0.4 in layer 2, -0.2 in layer 3; layers 0-1 never named
    assert ll.uniform_budget == 0.4 and ll.uniform_kept == 1
    text = layer_losses_finding(ll)
    assert "layer 2 (20.0% vs 60.0%)" in text and "kept 1 of 1" in text and "below that share in 1 of 2" in text
    table = layer_losses_table(ll)
    assert "| 2 | 20.0% | 60.0% | +40.0 pts | 40.0% |" in table and "| 0 (full) |" in table


def test_nothing_lost_gives_no_finding():
    ll = layer_losses([rec("a", "full", 1.0), rec("a", "paper", 1.0, [1, 1, 0.5], 0.01)])
    assert ll.lost == [] and layer_losses_finding(ll) is None
    assert layer_losses([rec("a", "full", 1.0)]) is None


def test_sweep_points_share_one_sample_set():
    records = [rec(s, "paper", 1.0, [1, 0.5], 0.01, exact=1.0) for s in "abcd"]
    records += [rec(s, "paper@0.1", 1.0, [1, 0.2], 0.1) for s in "ab"]
    groups = sweep_groups(records)
    assert sweep_samples(records) == {"a", "b"}
    assert {k: sorted(r["sample_id"] for r in v) for k, v in groups.items()} == {("paper", 0.01): ["a", "b"],
                                                                                ("paper", 0.1): ["a", "b"]}
    only_paper = [r for r in records if r["method"] == "paper"]
    assert sweep_samples(only_paper) == set("abcd")


@pytest.mark.parametrize("limit, expected", [(None, 3), (2, 2), (1, 1)])
def test_sweep_samples_limits_only_other_refreekv_methods(tmp_path, limit, expected):
    config = EvalConfig(tasks=["passkey"], lengths=[256], samples=3, sweep_samples=limit, out_dir=str(tmp_path))
    runner = Runner.__new__(Runner)
    runner.config = config
    samples = make_samples("passkey", 256, 3)
    for name, n in (("paper", 3), ("full", 3), ("recency@matched", 3), ("paper@0.1", expected),
                    ("official-script", expected), ("h2o-ranking@0.003", expected)):
        assert sum(runner.applies(s, parse_method(name)) for s in samples) == n, name


def test_sweep_samples_validated():
    with pytest.raises(ValueError, match="sweep_samples must be an int >= 1"):
        EvalConfig(sweep_samples=0).validate()
