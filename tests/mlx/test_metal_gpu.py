"""The real Metal kernels on an Apple GPU against the numpy reference (macOS with Apple silicon only).

Everywhere else these tests skip: the kernel logic is then covered by ``test_metal_shim.py`` (the same
kernel bodies compiled as C++). Run on a Mac with ``pytest tests/mlx/test_metal_gpu.py -v``.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

if platform.system() != "Darwin":
    pytest.skip(
        "Metal kernels need macOS on Apple silicon; the CPU shim tests cover their logic here", allow_module_level=True
    )
mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'refreekv_edu[mlx]')")
if not mx.metal.is_available():
    pytest.skip("MLX reports no Metal device on this Mac", allow_module_level=True)

from refreekv_mlx import MLXBackend  # noqa: E402
from refreekv_mlx.metal_kernels import metal_retained_norms, metal_window_scores  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

REF = NumpyBackend()


@pytest.fixture(autouse=True)
def on_gpu():
    previous = mx.default_device()
    mx.set_default_device(mx.gpu)
    yield
    mx.set_default_device(previous)


@pytest.mark.parametrize(
    "hq,length,dim,window,threads",
    [(1, 2, 4, 1, 32), (9, 9, 64, 8, 256), (9, 300, 64, 8, 256), (32, 4096, 128, 8, 256), (4, 1000, 80, 8, 64)],
)
def test_metal_window_scores_matches_reference(hq, length, dim, window, threads):
    rng = np.random.default_rng(length)
    q = rng.normal(size=(hq, window, dim)).astype(np.float32)
    k = rng.normal(size=(hq, length, dim)).astype(np.float32)
    col, last = metal_window_scores(mx.array(q), mx.array(k), dim**-0.5, window, threads=threads)
    ref_col, ref_last = REF.window_scores(q, k, dim**-0.5, window)
    np.testing.assert_allclose(np.array(col), ref_col, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(last), ref_last, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "hq,hkv,length,rows,n_cols",
    [(9, 3, 2047, 1, 2047), (9, 3, 500, 8, 500), (4, 4, 300, 8, 292), (8, 2, 33, 8, 33), (2, 1, 1, 1, 1)],
    ids=["paper r=1 n=L", "gqa r=8 n=L", "r=8 n=L-8", "odd L", "L=1"],
)
def test_metal_window_scores_n_cols_matches_reference(hq, hkv, length, rows, n_cols):
    rng = np.random.default_rng(length + rows)
    q = rng.normal(size=(hq, rows, 64)).astype(np.float32)
    k = rng.normal(size=(hkv, length, 64)).astype(np.float32)
    col, last = metal_window_scores(mx.array(q), mx.array(k), 0.125, rows, n_cols=n_cols)
    ref_col, ref_last = REF.window_scores(q, k, 0.125, rows, n_cols=n_cols)
    np.testing.assert_allclose(np.array(col), ref_col, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(last), ref_last, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("heads,n,threads", [(1, 1, 256), (9, 7, 256), (32, 4000, 256), (3, 1000, 1024)])
def test_metal_retained_norms_matches_reference(heads, n, threads):
    rng = np.random.default_rng(n)
    a = np.sort(rng.dirichlet(np.ones(n), size=heads).astype(np.float32), axis=1)
    got = np.array(metal_retained_norms(mx.array(a), threads=threads))
    np.testing.assert_allclose(got, REF.retained_norms(a), rtol=1e-4, atol=1e-7)


def test_backend_uses_kernels_on_gpu_and_decisions_match():
    be = MLXBackend(kernels="metal")
    assert be.uses_kernels()
    rng = np.random.default_rng(0)
    q = rng.normal(size=(9, 8, 64)).astype(np.float32)
    k = rng.normal(size=(3, 500, 64)).astype(np.float32)
    policies = [rk.ReFreeKV.preset(name) for name in rk.policies.PRESETS]
    policies += [rk.ReFreeKV(gqa="expand"), rk.ReFreeKV.preset("official-script", ranking="snapkv", gqa="expand")]
    for policy in policies:
        ref = policy.decide_layer(q, k, backend="numpy")
        got = policy.decide_layer(mx.array(q), mx.array(k), backend=be)
        assert got.n_evicted == ref.n_evicted, policy
        np.testing.assert_array_equal(got.kept, ref.kept)
        np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(got.last_attn, ref.last_attn, rtol=1e-4, atol=1e-6)


def test_gpu_argsort_is_stable_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(4, 5000)).astype(np.float32)
    got = np.array(MLXBackend().argsort(mx.array(x)))
    np.testing.assert_array_equal(got, np.argsort(x, axis=-1, kind="stable"))
