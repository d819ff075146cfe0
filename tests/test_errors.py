"""Bad input gets a clear error that says what was wrong."""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk

Q = np.zeros((4, 8, 16), np.float32)
K = np.zeros((2, 32, 16), np.float32)


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_threshold_outside_unit_interval(threshold):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rk.ReFreeKV(threshold=threshold)


def test_threshold_not_a_number():
    with pytest.raises(TypeError, match="threshold must be a number"):
        rk.ReFreeKV(threshold="high")


@pytest.mark.parametrize("window", [-3, 2.5, True])
def test_bad_window(window):
    with pytest.raises(ValueError, match="window must be an int >= 0"):
        rk.ReFreeKV(window=window)


@pytest.mark.parametrize("sinks", [-1, 1.5, False])
def test_bad_sinks(sinks):
    with pytest.raises(ValueError, match="sinks must be an int >= 0"):
        rk.ReFreeKV(sinks=sinks)


def test_window_ranking_needs_a_window():
    with pytest.raises(ValueError, match="needs window >= 1"):
        rk.ReFreeKV(ranking="h2o")  # the paper's window is 0
    with pytest.raises(ValueError, match="needs window >= 1"):
        rk.FixedBudget(ranking="snapkv", window=0)


@pytest.mark.parametrize("full_layers", [(-1,), ("0",), (1.5,), 3])
def test_bad_full_layers(full_layers):
    with pytest.raises((ValueError, TypeError), match="full_layers"):
        rk.ReFreeKV(full_layers=full_layers)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="paper, sinks-in-metric, h2o-ranking, official-script"):
        rk.ReFreeKV.preset("streaming")
    with pytest.raises(TypeError, match="unknown ReFreeKV field"):
        rk.ReFreeKV.preset("paper", treshold=0.02)
    with pytest.raises(TypeError, match="sinks_in_metric must be True or False"):
        rk.ReFreeKV(sinks_in_metric="yes")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0, "x"])
def test_bad_scale(scale):
    with pytest.raises((ValueError, TypeError), match="scale must be"):
        rk.ReFreeKV().decide_layer(Q, K, scale=scale)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="recency, h2o, snapkv"):
        rk.ReFreeKV(ranking="lru")
    with pytest.raises(ValueError, match="group, expand"):
        rk.ReFreeKV(gqa="mqa")
    with pytest.raises(ValueError, match="registered backends: .*numpy"):
        rk.ReFreeKV().decide_layer(Q, K, backend="jax")


@pytest.mark.parametrize("budget", [0.0, -1, 1.01, float("nan")])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rk.FixedBudget(budget=budget)


def test_heads_not_a_multiple():
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        rk.ReFreeKV().decide_layer(np.zeros((5, 8, 16), np.float32), K)


def test_head_dim_mismatch():
    with pytest.raises(ValueError, match="head dim mismatch"):
        rk.ReFreeKV().decide_layer(np.zeros((4, 8, 8), np.float32), K)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"expected queries \(Hq, r, D\)"):
        rk.ReFreeKV().decide_layer(np.zeros((4, 16), np.float32), K)


def test_batch_of_one_is_accepted_and_larger_batches_rejected():
    dec = rk.ReFreeKV().decide_layer(Q[None], K[None])
    assert dec.kept.shape[0] == 2
    with pytest.raises(ValueError, match="batch size 2"):
        rk.ReFreeKV().decide_layer(np.stack([Q, Q]), np.stack([K, K]))


def test_too_few_queries():
    with pytest.raises(ValueError, match="reads the last 8"):
        rk.ReFreeKV.preset("official-script").decide_layer(Q[:, :3], K)
    with pytest.raises(ValueError, match="reads the last 1"):
        rk.ReFreeKV().decide_layer(Q[:, :0], K)
    assert rk.ReFreeKV().decide_layer(Q[:, -1:], K).n_candidates == 28  # the paper needs the last row only


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs(bad):
    k = K.copy()
    k[1, 3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        rk.ReFreeKV().decide_layer(Q, k)


def test_integer_dtype():
    with pytest.raises(TypeError, match="floating-point"):
        rk.ReFreeKV().decide_layer(Q.astype(np.int32), K)


def test_not_an_array():
    with pytest.raises(TypeError, match="must be an array"):
        rk.ReFreeKV().decide_layer([[1.0]], K)


def test_halting_cut_input_checks():
    with pytest.raises(ValueError, match="permutation"):
        rk.halting_cut(np.ones((1, 3), np.float32), np.array([[0, 0, 1]]), 0.05)
    with pytest.raises(ValueError, match="NaN or inf"):
        rk.halting_cut(np.array([[np.nan, 1.0]], np.float32), np.array([[0, 1]]), 0.05)
    with pytest.raises(ValueError, match="does not divide"):
        rk.halting_cut(np.ones((3, 2), np.float32), np.array([[0, 1], [1, 0]]), 0.05)


def test_generate_rejects_non_policy_and_unknown_model():
    with pytest.raises(TypeError, match="policy must be"):
        rk.generate(object(), None, "hi", policy="refreekv")
    with pytest.raises(TypeError, match="no installed backend knows models"):
        rk.generate(object(), None, "hi")
