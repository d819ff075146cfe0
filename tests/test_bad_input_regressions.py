"""Regression tests for the bad inputs of issue 14 that reach the core (decisions, the halting rule, traces).

Each case once gave a silently wrong result or an internal traceback; each now gets a clear error before any
expensive work, or a correct, documented result. Trace files are covered in tests/test_decision.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu.backend import available_backends, get_backend

BACKENDS = [i.name for i in available_backends() if i.available]
RNG = np.random.default_rng(0)
Q = RNG.standard_normal((4, 8, 16)).astype(np.float32)
K = RNG.standard_normal((2, 40, 16)).astype(np.float32)
A = np.array([[0.1, 0.0, 0.7, 0.2]])
ORDER = np.argsort(A, axis=1, kind="stable")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", sorted(rk.policies.PRESETS))
def test_logits_that_overflow_float32_are_an_error_not_a_keep_everything(backend, preset):
    be = get_backend(backend)
    with pytest.raises(ValueError, match="overflow float32"):
        rk.ReFreeKV.preset(preset).decide_layer(be.asarray(Q * 1e19), be.asarray(K * 1e19), backend=be, layer=5)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -0.5])
def test_scale_is_validated(scale):
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        rk.ReFreeKV().decide_layer(Q, K, scale=scale)


def test_halting_cut_rejects_negative_attention():
    with pytest.raises(ValueError, match="non-negative"):
        rk.halting_cut(-A, ORDER, 0.05)


@pytest.mark.parametrize("factor", [1e20, 1e30, 1e-30, 1e-44])
def test_halting_cut_is_scale_free_at_extreme_magnitudes(factor):
    # The ratio does not depend on the scale of a; float32 squares must neither overflow nor underflow.
    with np.errstate(all="raise"):
        assert rk.halting_cut(A * factor, ORDER, 0.05) == rk.halting_cut(A, ORDER, 0.05) == 3
        assert rk.halting_cut(A * factor, ORDER, 0.02) == 2


def test_halting_cut_rejects_complex_and_strings():
    with pytest.raises(TypeError, match="complex"):
        rk.halting_cut(A + 1j, ORDER, 0.05)
    with pytest.raises(TypeError, match="numeric"):
        rk.halting_cut(np.array([["a", "b", "c", "d"]]), ORDER, 0.05)


@pytest.mark.parametrize("shapes", [((0, 1, 16), (0, 40, 16)), ((4, 1, 0), (2, 40, 0))], ids=["Hq=0", "D=0"])
def test_empty_heads_or_dims(shapes):
    with pytest.raises(ValueError, match="at least one head and one dimension"):
        rk.ReFreeKV().decide_layer(np.zeros(shapes[0], np.float32), np.zeros(shapes[1], np.float32))


def test_torch_bfloat16_and_meta_tensors_on_the_numpy_backend():
    torch = pytest.importorskip("torch")
    q, k = torch.from_numpy(Q).bfloat16(), torch.from_numpy(K).bfloat16()
    dec = rk.ReFreeKV().decide_layer(q, k, backend="numpy", layer=3)
    ref = rk.ReFreeKV().decide_layer(q.float().numpy(), k.float().numpy(), layer=3)
    np.testing.assert_array_equal(dec.kept, ref.kept)
    with pytest.raises(ValueError, match="meta tensor holds no data"):
        rk.ReFreeKV().decide_layer(q.to("meta"), k.to("meta"), backend="numpy")


def test_mlx_bfloat16_on_the_numpy_backend():
    mx = pytest.importorskip("mlx.core")
    q, k = mx.array(Q).astype(mx.bfloat16), mx.array(K).astype(mx.bfloat16)
    dec = rk.ReFreeKV().decide_layer(q, k, backend="numpy", layer=3)
    ref = rk.ReFreeKV().decide_layer(np.array(q.astype(mx.float32)), np.array(k.astype(mx.float32)), layer=3)
    np.testing.assert_array_equal(dec.kept, ref.kept)
