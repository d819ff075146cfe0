import numpy as np
import pytest
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


def test_kept_share_against_a_loop_over_heads_and_positions():
    dec = rk.ReFreeKV(threshold=0.2).decide_layer(*make_case("gqa_wide", seed=5))
    positions = [0, 3, dec.prompt_len - 1, 7, 3]
    expected = [np.mean([p in set(dec.kept[h].tolist()) for p in positions]) for h in range(dec.num_heads)]
    np.testing.assert_allclose(dec.kept_share(positions), expected)
    assert dec.kept_share([dec.prompt_len - 1]).tolist() == [1.0] * dec.num_heads  # the window is always kept
    trace = rk.Trace(layers=[dec, dec])
    assert trace.kept_share(positions).shape == (2, dec.num_heads)
    for bad, match in [([], "non-empty"), ([[1]], "1-D"), ([0.5], "ints"), ([dec.prompt_len], r"must lie in \[0, ")]:
        with pytest.raises(ValueError, match=match):
            dec.kept_share(bad)


def test_positions_of_finds_text_across_token_boundaries():
    def positions(tokens, text):
        return rk.Trace(tokens=tokens).positions_of(text)

    assert positions(["The", " key", " is", " ", "6", "6", "2", "2", "6", ".", " ", "662", "26"], "66226") == [
        4, 5, 6, 7, 8, 11, 12,
    ]  # fmt: skip
    assert positions(["x6", "62", "26y", "z"], "66226") == [0, 1, 2]  # glued to other text
    assert positions(["12", "", "3"], "123") == [0, 1, 2]  # an empty token inside the match counts
    assert positions(["no", " key"], "66226") == [] and positions([], "1") == [] and positions(["a"], "") == []


def test_round_trip_keeps_sinks_and_full_layers():
    q, k = make_case("gqa_wide")
    policy = rk.ReFreeKV.preset("sinks-in-metric", threshold=0.2)
    trace = rk.Trace(layers=[policy.decide_layer(q, k, layer=i) for i in range(3)])
    back = rk.Trace.from_json(trace.to_json())
    assert [d.full_layer for d in back.layers] == [True, True, False]
    assert back.layers[2].sinks == 4 and back.layers[2].sinks_in_metric
    np.testing.assert_array_equal(back.layers[2].sink_attn, trace.layers[2].sink_attn)
    assert back.layers[2].cut(0.2) == trace.layers[2].n_evicted
    np.testing.assert_allclose(back.budgets, [1.0, 1.0, trace.layers[2].budget])


def test_a_trace_from_before_sinks_still_loads():
    data = rk.ReFreeKV.preset("official-script").decide_layer(*make_case("gqa")).to_dict()
    for name in ("sinks", "sink_attn", "sinks_in_metric", "full_layer"):
        del data[name]
    dec = rk.LayerDecision.from_dict(data)
    assert dec.sinks == 0 and not dec.full_layer and dec.n_candidates == 42


def _corrupt(**changes):
    data = rk.ReFreeKV(threshold=0.2).decide_layer(*make_case("gqa"), layer=3).to_dict()
    data.update(changes)
    return rk.Trace(layers=[]).to_json().replace('"layers": []', '"layers": [' + __import__("json").dumps(data) + "]")


@pytest.mark.parametrize(
    "text,match",
    [
        ("[1, 2]", "JSON object"),
        ("{}", "JSON object"),
        ("{oops", "invalid JSON"),
        (_corrupt(kept=[[0, 1], [2]]), "rectangular"),
        (_corrupt(kept=[[0.5, 1.5]]), "integer positions"),
        (_corrupt(prompt_len="50"), "prompt_len must be an int"),
        (_corrupt(n_evicted=-1), "n_evicted must be an int"),
        (_corrupt(kept=[[0, 1, 99]]), r"positions in \[0, 50\)"),
        (_corrupt(policy=["x"]), "policy must be a string"),
        ('{"layers": [{"kept": NaN}]}', "NaN"),
        (_corrupt(order=[[0]]), "order must be"),
        (_corrupt(n_evicted=3), "does not fit"),
    ],
)
def test_trace_load_rejects_malformed_files(text, match, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        rk.Trace.load(path)
