"""The MLX backend against the numpy reference: vocabulary, fused ops (MLX-op path) and whole decisions.

Runs on MLX's CPU device on Linux (the Metal kernels are tested through the CPU shim in
``test_metal_shim.py`` and on a real GPU in ``test_metal_gpu.py``). Shapes stay small: the Linux
``mlx[cpu]`` wheel multiplies matrices with reference BLAS.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'refreekv_edu[mlx]')")

from refreekv_mlx import MLXBackend  # noqa: E402
from refreekv_mlx.backend import ordered_bits  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.policies import PRESETS  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

REF = NumpyBackend()
MLX = MLXBackend(kernels="ops")


def as_np(x) -> np.ndarray:
    return MLX.to_numpy(x)


# ---------------------------------------------------------------------------------------- vocabulary
def test_asarray_accepts_numpy_lists_mlx_and_casts():
    assert MLX.asarray([1, 2, 3]).dtype == mx.float32
    assert MLX.asarray(np.arange(3, dtype=np.float64)).dtype == mx.float32
    assert MLX.asarray(mx.array([1, 2], dtype=mx.float16)).dtype == mx.float32
    assert MLX.asarray(np.arange(3), dtype="int64").dtype == mx.int64
    assert MLX.is_native(MLX.asarray([1.0])) and not MLX.is_native(np.ones(1))
    with pytest.raises(ValueError, match="dtype must be one of"):
        MLX.asarray([1], dtype="float64")


def test_to_numpy_handles_bfloat16():
    x = mx.array([1.5, -2.0]).astype(mx.bfloat16)
    np.testing.assert_array_equal(MLX.to_numpy(x), np.array([1.5, -2.0], np.float32))


def test_all_finite():
    assert MLX.all_finite(mx.array([0.0, 1.0]))
    assert not MLX.all_finite(mx.array([0.0, float("nan")]))
    assert not MLX.all_finite(mx.array([float("-inf")]))


def test_ordered_bits_is_monotonic_including_specials():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(size=200) * 10.0 ** rng.integers(-30, 30, size=200),
            [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38],
        ]
    ).astype(np.float32)
    keys = np.array(ordered_bits(mx.array(values))).astype(np.int64)
    order = np.argsort(values, kind="stable")
    sorted_vals, sorted_keys = values[order], keys[order]
    assert np.all(np.diff(sorted_keys) >= 0), "keys must increase with the values"
    # equal values (including -0.0 == +0.0) get equal keys, different values different keys
    np.testing.assert_array_equal(np.diff(sorted_keys) == 0, np.diff(sorted_vals) == 0)


@pytest.mark.parametrize("shape,axis", [((50,), -1), ((3, 40), -1), ((3, 40), 0), ((2, 3, 17), 1)])
def test_argsort_is_stable_with_many_ties(shape, axis):
    rng = np.random.default_rng(len(shape))
    x = rng.integers(0, 3, size=shape).astype(np.float32)  # few distinct values: ties everywhere
    x[x == 1] = -0.0 if x.size % 2 else 0.0
    got = as_np(MLX.argsort(MLX.asarray(x), axis=axis))
    np.testing.assert_array_equal(got, np.argsort(x, axis=axis, kind="stable"))


def test_argsort_all_equal_keeps_positions():
    got = as_np(MLX.argsort(mx.zeros((2, 300))))
    np.testing.assert_array_equal(got, np.tile(np.arange(300), (2, 1)))


def test_cumsum_reverse_is_a_true_scan():
    rng = np.random.default_rng(1)
    x = rng.random((4, 33)).astype(np.float32)
    for reverse in (False, True):
        np.testing.assert_allclose(
            as_np(MLX.cumsum(MLX.asarray(x), axis=-1, reverse=reverse)), REF.cumsum(x, reverse=reverse), rtol=1e-6
        )
    # tiny tail after a huge head: total - prefix would lose it (or go negative); a reverse scan keeps it
    y = np.array([[1e8, 1e-3, 1e-3]], np.float32)
    np.testing.assert_allclose(as_np(MLX.cumsum(MLX.asarray(y), reverse=True))[0, 1:], [2e-3, 1e-3], rtol=1e-6)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("n", [1, 5, 30])
def test_max_pool1d_matches_reference(kernel, n):
    rng = np.random.default_rng(kernel * 100 + n)
    x = rng.normal(size=(3, n)).astype(np.float32)
    np.testing.assert_array_equal(as_np(MLX.max_pool1d(MLX.asarray(x), kernel)), REF.max_pool1d(x, kernel))


def test_softmax_take_repeat_group_sum_transpose_match_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    x[:, -2:] = -np.inf
    np.testing.assert_allclose(as_np(MLX.softmax(MLX.asarray(x))), REF.softmax(x), rtol=1e-6, atol=1e-7)
    idx = np.argsort(rng.random((4, 6)), axis=1)
    np.testing.assert_array_equal(
        as_np(MLX.take_along_axis(MLX.asarray(x), MLX.asarray(idx, "int64"), axis=1)), REF.take_along_axis(x, idx, 1)
    )
    k = rng.normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(as_np(MLX.repeat_heads(MLX.asarray(k), 3)), REF.repeat_heads(k, 3))
    np.testing.assert_allclose(as_np(MLX.group_sum(MLX.asarray(x), 2)), REF.group_sum(x, 2), rtol=1e-6)
    np.testing.assert_array_equal(as_np(MLX.transpose_last(MLX.asarray(k))), REF.transpose_last(k))
    a, b = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(as_np(MLX.matmul(MLX.asarray(a), MLX.asarray(b))), a @ b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- fused ops
def _qk(rng, hq, length, dim, window, scale=1.0):
    q = (rng.normal(size=(hq, window, dim)) * scale).astype(np.float32)
    k = rng.normal(size=(hq, length, dim)).astype(np.float32)
    return q, k


@pytest.mark.parametrize("hq,length,dim,window", [(1, 2, 4, 1), (3, 9, 8, 8), (4, 70, 16, 8), (2, 33, 64, 4)])
def test_window_scores_matches_reference(hq, length, dim, window):
    q, k = _qk(np.random.default_rng(length), hq, length, dim, window)
    scale = dim**-0.5
    ref_col, ref_last = REF.window_scores(q, k, scale, window)
    col, last = MLX.window_scores(MLX.asarray(q), MLX.asarray(k), scale, window)
    np.testing.assert_allclose(as_np(col), ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(as_np(last), ref_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "hq,hkv,length,rows,n_cols",
    [(4, 2, 37, 1, 37), (2, 2, 40, 8, 40), (2, 2, 40, 8, 32), (6, 2, 45, 8, 45), (3, 1, 1, 1, 1), (2, 1, 7, 7, 7)],
    ids=["paper r=1 n=L", "r=8 n=L", "r=8 n=L-8", "gqa odd L", "L=1", "r=L"],
)
def test_window_scores_n_cols_matches_reference(hq, hkv, length, rows, n_cols):
    rng = np.random.default_rng(length + rows)
    q = rng.normal(size=(hq, rows, 16)).astype(np.float32)
    k = rng.normal(size=(hkv, length, 16)).astype(np.float32)
    ref_col, ref_last = REF.window_scores(q, k, 0.25, rows, n_cols=n_cols)
    col, last = MLX.window_scores(MLX.asarray(q), MLX.asarray(k), 0.25, rows, n_cols=n_cols)
    assert tuple(col.shape) == tuple(last.shape) == (hq, n_cols)
    np.testing.assert_allclose(as_np(col), ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(as_np(last), ref_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (9, 1), (3, 50), (4, 257)])
def test_retained_norms_matches_reference(shape):
    rng = np.random.default_rng(shape[1])
    a = np.sort(rng.dirichlet(np.ones(shape[1]), size=shape[0]).astype(np.float32), axis=1)
    got = as_np(MLX.retained_norms(MLX.asarray(a)))
    np.testing.assert_allclose(got, REF.retained_norms(a), rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(got) <= 1e-7), "R(e) must not grow as more candidates are evicted"


# ---------------------------------------------------------------------------------------- decisions
def _case(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Named inputs ``q (Hq, w, D)``, ``k (Hkv, L, D)`` that stress different parts of the algorithm."""
    if name == "gqa":  # 3 query heads per KV head, like the bundled SmolLM2
        return rng.normal(size=(6, 8, 16)).astype(np.float32), rng.normal(size=(2, 48, 16)).astype(np.float32)
    if name == "mha":
        return rng.normal(size=(2, 8, 8)).astype(np.float32), rng.normal(size=(2, 40, 8)).astype(np.float32)
    if name == "flat":  # all keys zero: uniform attention, every score tied
        return rng.normal(size=(4, 8, 8)).astype(np.float32), np.zeros((2, 30, 8), np.float32)
    if name == "ties":  # repeated keys: groups of equal scores
        k = np.repeat(rng.normal(size=(1, 6, 8)), 5, axis=1).astype(np.float32)
        return rng.normal(size=(2, 8, 8)).astype(np.float32), k
    if name == "peaked":  # one key dominates every query
        k = rng.normal(size=(1, 40, 16)).astype(np.float32)
        q = np.broadcast_to(k[:, 5:6, :] * 3.0, (3, 8, 16)).astype(np.float32)
        return q, k
    if name == "zeros":  # queries zero: uniform attention again, through the other operand
        return np.zeros((3, 8, 8), np.float32), rng.normal(size=(3, 25, 8)).astype(np.float32)
    if name == "n1":  # exactly one candidate
        return rng.normal(size=(2, 8, 8)).astype(np.float32), rng.normal(size=(1, 9, 8)).astype(np.float32)
    if name == "short":  # L <= w: nothing to prune
        return rng.normal(size=(2, 5, 8)).astype(np.float32), rng.normal(size=(2, 5, 8)).astype(np.float32)
    raise KeyError(name)


CASES = ["gqa", "mha", "flat", "ties", "peaked", "zeros", "n1", "short"]
POLICIES = [
    # every preset as shipped
    *(rk.ReFreeKV.preset(name) for name in PRESETS),
    # the official script's variants, pinned since before the presets existed
    rk.ReFreeKV.preset("official-script", threshold=0.3, gqa="expand"),
    rk.ReFreeKV.preset("official-script", ranking="snapkv"),
    # the paper's variants: another threshold, one kept set per query head
    rk.ReFreeKV(threshold=0.2),
    rk.ReFreeKV(threshold=0.3, gqa="expand"),
    rk.FixedBudget(budget=0.5),
    rk.FixedBudget(budget=0.5, ranking="recency", sinks=4, window=0),
]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("case", CASES)
def test_decisions_match_reference(case, policy):
    q, k = _case(case, np.random.default_rng(CASES.index(case)))
    ref = policy.decide_layer(q, k, backend="numpy")
    got = policy.decide_layer(mx.array(q), mx.array(k), backend=MLX)
    assert got.n_evicted == ref.n_evicted
    np.testing.assert_array_equal(got.kept, ref.kept)
    np.testing.assert_array_equal(got.order, ref.order)
    np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got.last_attn, ref.last_attn, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sink_attn, ref.sink_attn, rtol=1e-4, atol=1e-6)


def test_full_layers_are_decided_without_computing():
    q, k = _case("gqa", np.random.default_rng(0))
    for layer in (0, 1):
        dec = rk.ReFreeKV().decide_layer(mx.array(q), mx.array(k), backend=MLX, layer=layer)
        assert dec.full_layer and dec.n_evicted == 0 and dec.budget == 1.0
        np.testing.assert_array_equal(dec.kept, np.tile(np.arange(48), (2, 1)))
    assert not rk.ReFreeKV().decide_layer(mx.array(q), mx.array(k), backend=MLX, layer=2).full_layer


def test_auto_backend_picks_mlx_for_mx_arrays():
    q, k = _case("gqa", np.random.default_rng(0))
    dec = rk.ReFreeKV().decide_layer(mx.array(q), mx.array(k), backend="auto")
    assert dec.n_evicted == rk.ReFreeKV().decide_layer(q, k).n_evicted


def test_registry_returns_mlx_backend():
    be = rk.get_backend("mlx")
    assert isinstance(be, MLXBackend)
    assert "mlx" in be.describe()


def test_kernel_mode_is_checked():
    with pytest.raises(ValueError, match="kernels must be"):
        MLXBackend(kernels="cuda")
    if not MLXBackend().has_metal():
        with pytest.raises(RuntimeError, match="needs a Metal GPU"):
            MLXBackend(kernels="metal").uses_kernels()
        assert not MLXBackend().uses_kernels()


def test_owns_model_recognises_mlx_modules():
    nn = pytest.importorskip("mlx.nn")
    assert MLX.owns_model(nn.Linear(2, 2))
    assert not MLX.owns_model(object())
