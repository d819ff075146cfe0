"""The synthetic trace the widget tests and notebooks use: deterministic, varied, and a faithful ReFreeKV run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.widgets.synthetic import default_tokens, synthetic_trace


def brute_ratio(last_attn, order, group):
    """ratio(e) by the definition: the L2 norm of the attention each head still keeps, averaged, loop by loop."""
    hq, n = last_attn.shape
    norms = []
    for e in range(n):
        per_head = []
        for h in range(hq):
            kept = order[h // group, e:]
            per_head.append(np.sqrt(sum(float(last_attn[h, j]) ** 2 for j in kept)))
        norms.append(np.mean(per_head))
    norms = np.array(norms)
    return (norms[0] - norms) / norms[0]


def test_same_seed_same_trace_and_json_round_trip():
    a, b = make_trace(seed=3), make_trace(seed=3)
    assert a.to_json() == b.to_json()
    c = rk.Trace.from_json(a.to_json())
    np.testing.assert_array_equal(c.budgets, a.budgets)
    assert c.tokens == a.tokens and len(c.tokens) == 48


def test_default_is_the_paper_preset_with_full_layers_0_and_1():
    trace = synthetic_trace()
    assert trace.meta["preset"] == "paper" and "preset='paper'" in trace.meta["policy"]
    assert [d.full_layer for d in trace.layers] == [True, True, False, False, False, False]
    np.testing.assert_array_equal(trace.budgets[:2], [1.0, 1.0])
    assert all(d.sinks == 4 and d.window == 0 and d.ranking == "recency" for d in trace.layers[2:])


def test_layers_get_different_budgets_and_keep_the_sinks_and_the_newest():
    trace = make_trace()
    assert len(set(np.round(trace.budgets[2:], 6))) >= 3, trace.budgets
    for d in trace.layers:
        assert d.kept.shape[0] == 2  # gqa="group": one kept set per KV head
        for head in d.kept:
            np.testing.assert_array_equal(head[:4], [0, 1, 2, 3])  # the sinks (and the planted sink 0) stay
            assert head[-1] == 47  # recency: the newest position is the last to go, and one candidate stays
    # The passkey digits are planted where default_tokens says.
    tokens, salient = default_tokens(48)
    assert [tokens[p] for p in salient] == ["7", "4", "1", "9"]


@pytest.mark.parametrize("preset", ["paper", "h2o-ranking", "official-script"])
def test_decisions_follow_the_halting_definition(preset):
    trace = make_trace(num_layers=4, policy=rk.ReFreeKV.preset(preset))
    for d in trace.layers:
        if d.full_layer:
            assert d.kept[0].tolist() == list(range(d.prompt_len))
            continue
        ratio = brute_ratio(d.last_attn, d.order, d.group_size)
        np.testing.assert_allclose(d.curve, ratio, atol=2e-6)
        e_star = max(e for e in range(d.n_candidates) if ratio[e] <= d.threshold + 1e-7)
        assert d.n_evicted == e_star
        for h in range(d.num_heads):
            candidates = sorted(d.candidate_positions()[h, e_star:].tolist())
            window = list(range(d.prompt_len - d.window, d.prompt_len))
            assert d.kept[h].tolist() == list(range(d.sinks)) + candidates + window


def test_expand_mode_and_fixed_budget_policies():
    expand = make_trace(num_layers=2, policy=rk.ReFreeKV(gqa="expand"))
    assert expand.layers[0].kept.shape[0] == 6
    fixed = make_trace(num_layers=2, policy=rk.FixedBudget(budget=0.5))
    np.testing.assert_allclose(fixed.budgets, [0.5, 0.5])


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        synthetic_trace(num_q_heads=5, num_kv_heads=2)
    with pytest.raises(ValueError, match="one string per position"):
        synthetic_trace(prompt_len=10, tokens=["a"])


def test_importing_the_package_does_not_import_ipywidgets_or_matplotlib():
    code = (
        "import sys, refreekv_edu, refreekv_edu.widgets as w; w.synthetic_trace(num_layers=1); "
        "bad = [m for m in ('ipywidgets', 'matplotlib') if m in sys.modules]; print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
