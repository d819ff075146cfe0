"""The instructor solutions are the library's algorithm: they agree with the numpy reference on random inputs.

The paper's pieces agree with ``rk.ReFreeKV()`` (the "paper" preset), the official script's with
``rk.ReFreeKV.preset("official-script")``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refreekv_edu as rk
from refreekv_edu.decision import Trace
from refreekv_edu.exercises import cases, cases_paper, solutions
from refreekv_edu.reference import NumpyBackend

be = NumpyBackend()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.integers(1, 4), window=st.integers(1, 8), extra=st.integers(1, 30))
def test_window_scores_match_backend(seed: int, heads: int, window: int, extra: int) -> None:
    q, k = cases.qk(np.random.default_rng(seed), heads, window, window + extra, 8)
    expected = be.window_scores(q, k, 0.35, window)
    got = solutions.window_scores(q, k, 0.35, window)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.integers(1, 6), n=st.integers(1, 60), threshold=st.floats(0, 0.99))
def test_curve_and_cut_match_halting(seed: int, heads: int, n: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    a = cases.attention_like(rng, heads, n)
    order = cases.random_order(rng, heads, n)
    np.testing.assert_allclose(
        solutions.halting_curve(a, order), rk.halting_curve(a, order), rtol=1e-5, atol=1e-6
    )  # float32 cancellation in R(0) - R(e)
    assert solutions.halting_cut(a, order, threshold) == rk.halting_cut(a, order, threshold)


def test_docstring_example_of_halting_cut() -> None:
    a = np.array([[0.1, 0.0, 0.7, 0.2]], np.float32)
    order = np.argsort(a, axis=1, kind="stable")
    assert solutions.halting_cut(a, order, 0.02) == rk.halting_cut(a, order, 0.02) == 2
    assert solutions.halting_cut(a, order, 0.05) == rk.halting_cut(a, order, 0.05) == 3


def test_vocabulary_pieces_match_backend() -> None:
    rng = np.random.default_rng(3)
    scores = cases.attention_like(rng, 6, 25)
    for kernel in (1, 3, 7):
        np.testing.assert_allclose(solutions.snapkv_pool(scores, kernel), be.max_pool1d(scores, kernel))
    keys = rng.normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(solutions.expand_kv(keys, 3), be.repeat_heads(keys, 3))
    np.testing.assert_allclose(solutions.group_scores(scores, 3), be.group_sum(scores, 3), rtol=1e-6)
    ties = rng.integers(0, 3, size=(2, 200)).astype(np.float32)
    np.testing.assert_array_equal(solutions.rank_candidates(ties), be.argsort(ties, axis=-1))


@pytest.mark.parametrize("hq,hkv,threshold", [(4, 4, 0.05), (9, 3, 0.05), (6, 2, 0.01), (6, 2, 0.3), (4, 1, 0.1)])
def test_official_script_layer_matches_the_preset(hq: int, hkv: int, threshold: float) -> None:
    rng = np.random.default_rng(hq * 10 + hkv)
    window, length = 8, 64
    q = (2.0 * rng.normal(size=(hq, window, 16))).astype(np.float32)
    k = rng.normal(size=(hkv, length, 16)).astype(np.float32)
    policy = rk.ReFreeKV.preset("official-script", threshold=threshold, window=window)
    dec = policy.decide_layer(q, k, layer=0)  # the official script has no full layers: layer 0 is pruned too
    kept = solutions.official_script_layer(q, k, threshold, window)
    np.testing.assert_array_equal(kept, dec.kept)
    assert 0 < dec.n_evicted  # the case actually prunes something


def _paper_inputs(seed: int, hq: int, hkv: int, length: int, rows: int = 1):
    rng = np.random.default_rng(seed)
    q = (2.0 * rng.normal(size=(hq, rows, 16))).astype(np.float32)
    k = cases_paper._with_sink(rng, q, rng.normal(size=(hkv, length, 16)).astype(np.float32))
    return q, k


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(4, 4), (9, 3), (6, 2), (4, 1)]),
    length=st.integers(6, 70),
    sinks=st.integers(0, 5),
    threshold=st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.9]),
)
def test_paper_pieces_match_refreekv(
    seed: int, shape: tuple[int, int], length: int, sinks: int, threshold: float
) -> None:
    q, k = _paper_inputs(seed, *shape, length)
    dec = rk.ReFreeKV(threshold=threshold, sinks=sinks).decide_layer(q, k, layer=5)
    last_row = solutions.last_row_attention(q, k, 1.0 / np.sqrt(16))
    np.testing.assert_allclose(last_row[:, sinks:], dec.last_attn, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(solutions.candidate_curve(last_row, sinks), dec.curve, rtol=1e-5, atol=1e-6)
    kept = solutions.recency_keep(last_row, sinks, threshold)
    np.testing.assert_array_equal(np.broadcast_to(kept, dec.kept.shape), dec.kept)
    np.testing.assert_array_equal(solutions.decide_layer(q, k, threshold, sinks, 5), dec.kept)


@pytest.mark.parametrize("layer", [0, 1, 2, 7])
def test_capstone_is_the_paper_default(layer: int) -> None:
    """``decide_layer(q, k, 0.01, 4, layer)`` is exactly ``rk.ReFreeKV()`` (the paper preset), full layers included."""
    q, k = _paper_inputs(layer, 9, 3, 48)
    dec = rk.ReFreeKV().decide_layer(q, k, layer=layer)
    np.testing.assert_array_equal(solutions.decide_layer(q, k, 0.01, 4, layer), dec.kept)
    assert dec.full_layer == (layer in solutions.PAPER_FULL_LAYERS)


def test_candidate_curve_matches_sinks_out_of_halting_cut() -> None:
    """Sinks out of the metric = the curve of last_row[:, m:]; sinks in = ``always_kept`` (the ablation preset)."""
    q, k = _paper_inputs(11, 6, 2, 40)
    last_row = solutions.last_row_attention(q, k, 0.25)
    order = np.broadcast_to(np.arange(36), (6, 36))
    np.testing.assert_allclose(
        solutions.candidate_curve(last_row, 4), rk.halting_curve(last_row[:, 4:], order), atol=1e-6
    )
    ablation = rk.ReFreeKV.preset("sinks-in-metric", threshold=0.05).decide_layer(q, k, layer=3)
    assert ablation.n_evicted == rk.halting_cut(last_row[:, 4:], order, 0.05, always_kept=last_row[:, :4])


def test_model_budget_matches_a_trace_of_the_paper() -> None:
    """Per-layer budgets and the mean (full layers at 100%) equal the library's ``Trace`` of ``ReFreeKV()`` decisions."""
    policy = rk.ReFreeKV(threshold=0.05)
    layers, rows = [], []
    for layer in range(6):
        q, k = _paper_inputs(100 + layer, 6, 2, 40)
        layers.append(policy.decide_layer(q, k, layer=layer))
        rows.append(solutions.last_row_attention(q, k, 0.25))
    budgets, mean = solutions.model_budget(np.stack(rows), 4, 0.05, policy.full_layers)
    trace = Trace(layers=layers)
    np.testing.assert_allclose(budgets, trace.budgets)
    assert mean == pytest.approx(trace.mean_budget)
    assert budgets[0] == budgets[1] == 1.0 and budgets[2:].max() < 1.0
