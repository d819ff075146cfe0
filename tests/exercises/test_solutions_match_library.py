"""The instructor solutions are the library's algorithm: they agree with the numpy reference on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refreekv_edu as rk
from refreekv_edu.exercises import cases, solutions
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
    np.testing.assert_allclose(solutions.halting_curve(a, order), rk.halting_curve(a, order), rtol=1e-5, atol=1e-6)  # float32 cancellation in R(0) - R(e)
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
def test_capstone_matches_refreekv_policy(hq: int, hkv: int, threshold: float) -> None:
    rng = np.random.default_rng(hq * 10 + hkv)
    window, length = 8, 64
    q = (2.0 * rng.normal(size=(hq, window, 16))).astype(np.float32)
    k = rng.normal(size=(hkv, length, 16)).astype(np.float32)
    dec = rk.ReFreeKV(threshold=threshold, window=window).decide_layer(q, k)
    kept = solutions.decide_layer(q, k, threshold, window)
    np.testing.assert_array_equal(kept, dec.kept)
    assert 0 < dec.n_evicted  # the case actually prunes something
