"""The numpy reference against a loop-by-loop transcription of the spec (tests/spec_bruteforce.py)."""

from __future__ import annotations

import numpy as np
import pytest
import spec_bruteforce as spec
from cases import CASES, make_case

import refreekv_edu as rk


def _assert_same(dec, kept, e_star, ratio, threshold=None):
    np.testing.assert_allclose(dec.curve, ratio, rtol=1e-4, atol=1e-5)
    if threshold is not None and e_star != dec.n_evicted:
        # Only acceptable when float32 vs float64 rounding straddles the threshold itself.
        boundary = ratio[min(e_star, dec.n_evicted) + 1]
        assert abs(boundary - threshold) < 1e-5, (e_star, dec.n_evicted)
        return
    assert dec.n_evicted == e_star
    np.testing.assert_array_equal(dec.kept, kept)


# Cases whose scores have no float32-level near-ties: float32 and float64 must pick the same sets.
STRICT = {"gqa", "mha", "gqa_wide", "ties", "short", "equal", "one_candidate"}


# Every preset's configuration, plus the window rankings under the official script's layout.
CONFIGS = {
    "paper": rk.policies.PRESETS["paper"],
    "sinks-in-metric": rk.policies.PRESETS["sinks-in-metric"],
    "h2o-ranking": rk.policies.PRESETS["h2o-ranking"],
    "official-script": rk.policies.PRESETS["official-script"],
    "official-snapkv": {**rk.policies.PRESETS["official-script"], "ranking": "snapkv"},
    "recency-window": {**rk.policies.PRESETS["paper"], "sinks": 2, "window": 8},
}


def _spec_kwargs(config: dict) -> dict:
    return {k: config[k] for k in ("window", "ranking", "sinks", "sinks_in_metric", "full_layers")}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("gqa", ["group", "expand"])
def test_refreekv_matches_bruteforce(case, config, gqa):
    q, k = make_case(case, seed=1)
    fields = {**CONFIGS[config], "threshold": 0.1, "gqa": gqa}
    spec_kw = {**_spec_kwargs(fields), "gqa": gqa, "threshold": 0.1}
    dec = rk.ReFreeKV(**fields).decide_layer(q, k, layer=7)
    _, _, _, bf_scores = spec.decide(q, k, **spec_kw)
    np.testing.assert_allclose(dec.scores, bf_scores, rtol=1e-4, atol=1e-6)
    # The order sorts the (float64) scores ascending, up to float32 noise.
    if dec.order.shape[1] > 1:
        steps = np.diff(np.take_along_axis(bf_scores, dec.order, axis=1), axis=1)
        assert steps.min() >= -1e-5 * max(1.0, np.abs(bf_scores).max())
    # Given that order, the halting rule and the kept sets follow the spec exactly.
    kept, e_star, ratio, _ = spec.decide(q, k, orders=dec.order, **spec_kw)
    _assert_same(dec, kept, e_star, ratio, threshold=0.1)
    if case in STRICT or fields["ranking"] == "recency":  # recency has no float32 near-ties to straddle
        kept, e_star, ratio, _ = spec.decide(q, k, **spec_kw)
        _assert_same(dec, kept, e_star, ratio, threshold=0.1)


@pytest.mark.parametrize("layer", [0, 1, 2, None])
def test_full_layers_keep_everything_and_others_prune(layer):
    q, k = make_case("gqa_wide")
    dec = rk.ReFreeKV(threshold=0.3).decide_layer(q, k, layer=layer)
    kept, e_star, _, _ = spec.decide(q, k, threshold=0.3, layer=layer, **_spec_kwargs(rk.policies.PRESETS["paper"]))
    np.testing.assert_array_equal(dec.kept, kept)
    assert dec.n_evicted == e_star
    assert dec.full_layer == (layer in (0, 1))
    assert (dec.budget == 1.0) == (layer in (0, 1)), "T = 0.3 prunes every layer that is not full"


def test_sinks_in_metric_prunes_at_least_as_much():
    # With the sinks in the norm every tail sum grows by the same amount, so the relative loss can only shrink.
    for case in ("gqa", "mha", "gqa_wide", "ties"):
        q, k = make_case(case, seed=3)
        paper = rk.ReFreeKV(threshold=0.05).decide_layer(q, k, layer=4)
        literal = rk.ReFreeKV.preset("sinks-in-metric", threshold=0.05).decide_layer(q, k, layer=4)
        assert literal.n_evicted >= paper.n_evicted
        np.testing.assert_array_equal(literal.kept[:, :4], paper.kept[:, :4])


@pytest.mark.parametrize("budget", [0.05, 0.3, 0.77, 1.0])
def test_fixed_budget_matches_bruteforce(budget):
    q, k = make_case("gqa", seed=2)
    dec = rk.FixedBudget(budget=budget).decide_layer(q, k)
    kept, e_star, ratio, _ = spec.decide(q, k, budget=budget)
    _assert_same(dec, kept, e_star, ratio)
    assert dec.n_kept == max(8 + 1, int(np.ceil(budget * 50)))
    streaming = rk.FixedBudget(budget=budget, ranking="recency", sinks=4, window=0).decide_layer(q, k)
    kept, e_star, ratio, _ = spec.decide(q, k, budget=budget, ranking="recency", sinks=4, window=0)
    _assert_same(streaming, kept, e_star, ratio)
    assert streaming.n_kept == max(4 + 1, int(np.ceil(budget * 50)))


def test_fixed_budget_one_evicts_nothing_and_full_cache_keeps_all():
    q, k = make_case("gqa")
    for policy in (rk.FixedBudget(budget=1.0), rk.FullCache()):
        dec = policy.decide_layer(q, k)
        assert dec.n_evicted == 0 and dec.budget == 1.0
        np.testing.assert_array_equal(dec.kept, np.tile(np.arange(50), (2, 1)))


def test_window_attention_rows_are_causal_and_normalised():
    q, k = make_case("gqa")
    be = rk.get_backend("numpy")
    col, last = be.window_scores(q, k, 0.25, 8)  # (Hkv, L, D) keys: query head h reads KV head h // 3
    probs = spec.window_probs(q, k, 0.25, 8)
    np.testing.assert_allclose(col, probs[:, :, :42].sum(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last, probs[:, 7, :42], rtol=1e-5, atol=1e-7)
    # All L columns: the window rows' own columns follow the causal mask; one row is the paper's q K^T row.
    col, last = be.window_scores(q, k, 0.25, 8, n_cols=50)
    np.testing.assert_allclose(col, probs.sum(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last, probs[:, 7], rtol=1e-5, atol=1e-7)
    col, last = be.window_scores(q[:, -1:], k, 0.25, 1, n_cols=50)
    np.testing.assert_allclose(last, spec.window_probs(q, k, 0.25, 1)[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(col, last)


def test_group_mode_ranks_by_summed_group_scores():
    q, k = make_case("gqa_wide")
    dec = rk.ReFreeKV.preset("official-script", gqa="group").decide_layer(q, k)
    per_q = rk.ReFreeKV.preset("official-script", gqa="expand").decide_layer(q, k)
    summed = per_q.scores.reshape(2, 4, -1).sum(axis=1)
    np.testing.assert_allclose(dec.scores, summed, rtol=1e-5)
    np.testing.assert_array_equal(dec.order, np.argsort(summed, axis=1, kind="stable"))
    assert dec.kept.shape[0] == 2 and per_q.kept.shape[0] == 8


def test_ties_evict_the_older_position_first():
    q, k = make_case("zeros")  # uniform attention: every candidate ties
    dec = rk.FixedBudget(budget=0.5).decide_layer(q, k)
    np.testing.assert_array_equal(dec.order[0], np.arange(22))
    np.testing.assert_array_equal(dec.kept[0], np.arange(dec.n_evicted, 30))


def test_recency_ranking_keeps_sinks_and_a_recent_suffix():
    q, k = make_case("gqa")
    dec = rk.FixedBudget(budget=0.4, ranking="recency", sinks=4, window=0).decide_layer(q, k)
    assert dec.kept[0, :4].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(dec.kept[0, 4:], np.arange(50 - (dec.n_kept - 4), 50))
    np.testing.assert_array_equal(dec.order, np.tile(np.arange(46), (2, 1)))  # one order, oldest first
    np.testing.assert_array_equal(dec.kept[0], dec.kept[1])


def test_halting_cut_docstring_example_and_group_orders():
    a = np.array([[0.1, 0.0, 0.7, 0.2]], np.float32)
    order = np.argsort(a, axis=1, kind="stable")
    assert rk.halting_cut(a, order, 0.02) == 2
    assert rk.halting_cut(a, order, 0.05) == 3
    assert rk.halting_cut(a, order, 0.0) == 1  # evicting the exact zero loses nothing
    # one order row per group of 2 heads
    a2 = np.array([[0.5, 0.5, 0.0], [0.4, 0.6, 0.0]], np.float32)
    assert rk.halting_cut(a2, np.array([[2, 0, 1]]), 0.0) == 1


def test_halting_cut_always_kept_joins_every_tail():
    a = np.array([[0.1, 0.0, 0.7, 0.2]], np.float32)
    order = np.argsort(a, axis=1, kind="stable")
    sinks = np.array([[3.0]], np.float32)
    # Brute force: R(e) = sqrt(9 + tail(e)); evicting 0.0, 0.1 and 0.2 loses (sqrt(9.54) - sqrt(9.49)) / sqrt(9.54).
    tails = [0.54, 0.54, 0.53, 0.49]
    ratio = [(np.sqrt(9 + tails[0]) - np.sqrt(9 + t)) / np.sqrt(9 + tails[0]) for t in tails]
    np.testing.assert_allclose(rk.halting_curve(a, order, always_kept=sinks), ratio, rtol=1e-5, atol=1e-7)
    assert rk.halting_cut(a, order, 0.01, always_kept=sinks) == 3
    assert rk.halting_cut(a, order, 0.01) == 2  # without the sinks, dropping 0.2 as well would lose 4.7%


def test_zero_candidate_attention_evicts_all_but_one():
    a = np.zeros((3, 5), np.float32)
    order = np.tile(np.arange(5), (3, 1))
    assert rk.halting_cut(a, order, 0.05) == 4
    np.testing.assert_array_equal(rk.halting_curve(a, order), np.zeros(5))
