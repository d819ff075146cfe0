import numpy as np
from cases import make_case

import refreekv_edu as rk


def test_trace_json_round_trip(tmp_path):
    layers = [
        rk.ReFreeKV(gqa=g).decide_layer(*make_case(c), layer=i)
        for i, (c, g) in enumerate([("gqa", "group"), ("mha", "expand"), ("short", "group")])
    ]
    trace = rk.Trace(layers=layers, tokens=["a", "b"], meta={"model": "x"})
    back = rk.Trace.load(trace.save(tmp_path / "t.json"))
    assert back.tokens == ["a", "b"] and back.meta == {"model": "x"}
    for a, b in zip(trace.layers, back.layers):
        for name in ("kept", "order", "scores", "last_attn", "curve"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(b, name).dtype == getattr(a, name).dtype
        assert (a.n_evicted, a.budget, a.layer, a.policy, a.threshold) == (
            b.n_evicted,
            b.budget,
            b.layer,
            b.policy,
            b.threshold,
        )
    np.testing.assert_allclose(back.budgets, trace.budgets)
    assert back.mean_budget == trace.mean_budget


def test_evicted_mask_is_the_complement_of_kept():
    dec = rk.FixedBudget(budget=0.5).decide_layer(*make_case("gqa"))
    mask = dec.evicted_mask()
    assert mask.shape == (2, 50)
    assert mask.sum(axis=1).tolist() == [dec.n_evicted] * 2
    assert not mask[:, -8:].any()
