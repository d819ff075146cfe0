"""The Metal kernel bodies, compiled as C++ through ``cpu_shim/metal_shim.h`` and run on CPU threads.

This is how the kernels' logic (indexing, causal masking of the columns after a row's position, two-pass
softmax, tree reduction, chunked reverse scan, barrier placement) is verified without an Apple GPU. Needs a C++20 compiler (g++ >= 11); MLX is not needed.
The first run compiles each kernel (a few seconds); later runs reuse the cached library.
"""

from __future__ import annotations

import numpy as np
import pytest
from refreekv_mlx import cpu_shim
from refreekv_mlx.metal_kernels import (
    KernelSpec,
    Launch,
    retained_norms_launch,
    retained_norms_spec,
    window_scores_launch,
    window_scores_spec,
)

from refreekv_edu.reference import NumpyBackend

pytestmark = pytest.mark.skipif(cpu_shim.compiler() is None, reason="no C++ compiler (g++/clang++) to build the shim")

REF = NumpyBackend()


# ----------------------------------------------------------------------------------- window_scores
@pytest.mark.parametrize(
    "hq,length,dim,window,threads",
    [
        (1, 2, 4, 1, 1),  # one thread does everything
        (2, 9, 8, 8, 4),  # n = 1
        (3, 40, 16, 8, 8),  # several keys per thread
        (2, 40, 16, 8, 64),  # more threads than keys: idle threads must not poison the reduction
        (2, 300, 64, 8, 32),  # D = 64 like SmolLM2, L >> threads
        (1, 20, 130, 3, 16),  # D not a multiple of anything, staged by a strided loop
    ],
)
def test_window_scores_matches_reference(hq, length, dim, window, threads):
    rng = np.random.default_rng(length + dim)
    q = rng.normal(size=(hq, window, dim)).astype(np.float32)
    k = rng.normal(size=(hq, length, dim)).astype(np.float32)
    scale = dim**-0.5
    col, last = cpu_shim.shim_window_scores(q, k, scale, window, threads=threads)
    ref_col, ref_last = REF.window_scores(q, k, scale, window)
    np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)


# The paper's call is r = 1 row over all L columns; in general columns j >= L - r are causally masked for the
# rows before j (row i is position L - r + i). Hq=6 over Hkv=2 is GQA; odd L puts the last columns off a
# thread-stride boundary.
N_COLS_CASES = {
    "paper r=1 n=L": (4, 2, 37, 16, 1, 37, 8),
    "r=8 n=L": (4, 4, 40, 16, 8, 40, 8),
    "r=8 n=L-8 (official)": (4, 4, 40, 16, 8, 32, 8),
    "r=8 n between": (2, 2, 33, 8, 8, 29, 4),
    "gqa r=1 n=L": (6, 2, 53, 16, 1, 53, 16),
    "gqa r=8 n=L odd L": (6, 2, 45, 8, 8, 45, 32),
    "r=L n=L": (2, 1, 7, 4, 7, 7, 2),
    "L=1": (3, 1, 1, 4, 1, 1, 1),
    "more threads than keys": (2, 2, 9, 8, 1, 9, 64),
}


@pytest.mark.parametrize("case", list(N_COLS_CASES))
def test_window_scores_n_cols_matches_reference(case):
    hq, hkv, length, dim, rows, n_cols, threads = N_COLS_CASES[case]
    rng = np.random.default_rng(length * 7 + rows)
    q = rng.normal(size=(hq, rows, dim)).astype(np.float32)
    k = rng.normal(size=(hkv, length, dim)).astype(np.float32)
    scale = dim**-0.5
    col, last = cpu_shim.shim_window_scores(q, k, scale, rows, threads=threads, n_cols=n_cols)
    ref_col, ref_last = REF.window_scores(q, k, scale, rows, n_cols=n_cols)
    assert col.shape == last.shape == (hq, n_cols)
    np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)
    if n_cols == length:
        # The last row is a whole softmax row; a column only the last j rows see gets only their mass.
        np.testing.assert_allclose(last.sum(axis=1), 1.0, rtol=1e-5)
        for j in range(max(length - rows, 0), length):
            assert np.all(col[:, j] <= length - j + 1e-5)


def test_window_scores_masked_columns_get_no_mass():
    """Row i must put exactly 0 on the columns after its own position: r = 4, n = L, flat attention."""
    q = np.ones((2, 4, 8), np.float32)
    k = np.zeros((1, 10, 8), np.float32)
    col, last = cpu_shim.shim_window_scores(q, k, 1.0, 4, threads=4, n_cols=10)
    expected = np.array([sum(1.0 / p for p in range(7, 11) if j < p) for j in range(10)], np.float32)
    np.testing.assert_allclose(col, np.broadcast_to(expected, (2, 10)), rtol=1e-6)
    np.testing.assert_allclose(last, np.full((2, 10), 0.1), rtol=1e-6)


def test_window_scores_default_launch_256_threads():
    rng = np.random.default_rng(7)
    q, k = rng.normal(size=(2, 8, 16)).astype(np.float32), rng.normal(size=(2, 100, 16)).astype(np.float32)
    col, last = cpu_shim.shim_window_scores(q, k, 0.25, 8)
    ref_col, ref_last = REF.window_scores(q, k, 0.25, 8)
    np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)


def test_window_scores_peaked_and_flat_attention():
    rng = np.random.default_rng(3)
    k = rng.normal(size=(2, 50, 8)).astype(np.float32)
    # peaked: logits of ~1e3 would overflow exp without the max subtraction
    q = np.broadcast_to(k[:, 10:11, :] * 40.0, (2, 8, 8)).astype(np.float32).copy()
    col, last = cpu_shim.shim_window_scores(q, k, 1.0, 8, threads=16)
    ref_col, ref_last = REF.window_scores(q, k, 1.0, 8)
    assert np.all(np.isfinite(col)) and np.all(np.isfinite(last))
    np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)
    # flat: zero keys give exactly uniform rows over the visible prefix
    col, last = cpu_shim.shim_window_scores(q, np.zeros_like(k), 1.0, 8, threads=16)
    np.testing.assert_allclose(last, np.full((2, 42), 1.0 / 50), rtol=1e-6)
    expected = sum(1.0 / (43 + i) for i in range(8))
    np.testing.assert_allclose(col, np.full((2, 42), expected), rtol=1e-5)


# ----------------------------------------------------------------------------------- retained_norms
@pytest.mark.parametrize(
    "heads,n,threads",
    [(1, 1, 1), (1, 1, 64), (3, 7, 2), (9, 100, 8), (4, 257, 64), (2, 1000, 256), (5, 64, 64), (2, 10, 3)],
)
def test_retained_norms_matches_reference(heads, n, threads):
    rng = np.random.default_rng(heads * n)
    a = np.sort(rng.dirichlet(np.ones(n), size=heads).astype(np.float32), axis=1)
    got = cpu_shim.shim_retained_norms(a, threads=threads)
    np.testing.assert_allclose(got, REF.retained_norms(a), rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(got))


def test_retained_norms_zeros_and_tiny_tail():
    np.testing.assert_array_equal(cpu_shim.shim_retained_norms(np.zeros((3, 20), np.float32), threads=4), 0.0)
    # a huge value followed by tiny ones: R(e) for the tail must come from a scan, not total - prefix
    a = np.array([[1e3, 1e-4, 1e-4, 1e-4]], np.float32)
    got = cpu_shim.shim_retained_norms(a, threads=2)
    np.testing.assert_allclose(got[1:], np.sqrt([3e-8, 2e-8, 1e-8]), rtol=1e-5)


# ----------------------------------------------------------------------------------- whole decisions
class ShimBackend(NumpyBackend):
    """The numpy reference with its two fused operations replaced by the shim-run Metal kernel bodies."""

    name = "numpy+metal-shim"

    def window_scores(self, queries, keys, scale, window, n_cols=None):
        return cpu_shim.shim_window_scores(queries, keys, scale, window, threads=32, n_cols=n_cols)

    def retained_norms(self, a_sorted):
        return cpu_shim.shim_retained_norms(a_sorted, threads=32)


#: (preset, overrides): every preset as shipped, plus the official script's variants pinned since before the presets.
SHIM_POLICIES = [
    ("paper", {}),
    ("sinks-in-metric", {}),
    ("h2o-ranking", {}),
    ("official-script", {}),
    ("official-script", {"gqa": "expand", "threshold": 0.2}),
    ("official-script", {"ranking": "snapkv"}),
    ("paper", {"gqa": "expand", "threshold": 0.2}),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("preset,overrides", SHIM_POLICIES, ids=[f"{p}{o or ''}" for p, o in SHIM_POLICIES])
def test_decisions_with_shim_kernels_match_reference(seed, preset, overrides):
    import refreekv_edu as rk

    rng = np.random.default_rng(seed)
    hkv, groups = 1 + seed % 3, 1 + (seed + 1) % 3
    length = 20 + 37 * seed
    q = rng.normal(size=(hkv * groups, 8, 16)).astype(np.float32)
    k = rng.normal(size=(hkv, length, 16)).astype(np.float32)
    policy = rk.ReFreeKV.preset(preset, **overrides)
    ref = policy.decide_layer(q, k, backend="numpy")
    got = policy.decide_layer(q, k, backend=ShimBackend())
    assert got.n_evicted == ref.n_evicted
    np.testing.assert_array_equal(got.kept, ref.kept)
    np.testing.assert_array_equal(got.order, ref.order)
    np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got.last_attn, ref.last_attn, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sink_attn, ref.sink_attn, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------- the shim itself
def test_generated_cpp_contains_the_metal_body_verbatim():
    spec = window_scores_spec()
    cpp = cpu_shim.generate_cpp(spec)
    assert spec.source in cpp
    assert "const float* q" in cpp and "float* col_sum" in cpp


def _tiny_spec(name: str, source: str) -> KernelSpec:
    return KernelSpec(name=name, inputs=(("x", "float32"),), outputs=(("y", "float32"),), source=source, header="")


def test_barrier_in_divergent_code_is_reported():
    spec = _tiny_spec(
        "divergent_barrier",
        """
        const uint t = thread_position_in_threadgroup.x;
        y[t] = x[t];
        if (t % 2 == 0) {
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
        """,
    )
    launch = Launch(grid=(4, 1, 1), threadgroup=(4, 1, 1), output_shapes=((4,),), extra_inputs=())
    with pytest.raises(RuntimeError, match="different numbers of barriers"):
        cpu_shim.build(spec)([np.ones(4, np.float32)], launch)


def test_threadgroup_memory_is_shared_and_barriers_are_real():
    # every thread writes its slot, waits, then reads its neighbour's: wrong without a real barrier
    spec = _tiny_spec(
        "neighbour_exchange",
        """
        threadgroup float slots[64];
        const uint t = thread_position_in_threadgroup.x;
        const uint g = threadgroup_position_in_grid.x;
        const uint size = threads_per_threadgroup.x;
        slots[t] = x[g * size + t];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        y[g * size + t] = slots[(t + 1) % size];
        """,
    )
    x = np.arange(64, dtype=np.float32)
    launch = Launch(grid=(64, 1, 1), threadgroup=(16, 1, 1), output_shapes=((64,),), extra_inputs=())
    (y,) = cpu_shim.build(spec)([x], launch)
    np.testing.assert_array_equal(y, np.roll(x.reshape(4, 16), -1, axis=1).ravel())


def test_unwritten_outputs_show_up_as_nan():
    spec = _tiny_spec("half_written", "const uint t = thread_position_in_grid.x; if (t % 2 == 0) { y[t] = x[t]; }")
    launch = Launch(grid=(6, 1, 1), threadgroup=(3, 1, 1), output_shapes=((6,),), extra_inputs=())
    (y,) = cpu_shim.build(spec)([np.ones(6, np.float32)], launch)
    np.testing.assert_array_equal(np.isnan(y), [False, True, False, True, False, True])


def test_launch_checks():
    with pytest.raises(ValueError, match="power of two"):
        window_scores_launch(2, 20, 8, 8, 1.0, threads=48)
    with pytest.raises(ValueError, match="MAX_HEAD_DIM"):
        window_scores_launch(2, 20, 1024, 8, 1.0)
    with pytest.raises(ValueError, match="n_cols"):
        window_scores_launch(2, 8, 8, 8, 1.0)  # r = L and the default n_cols = L - r: no columns
    with pytest.raises(ValueError, match="window <= L"):
        window_scores_launch(2, 8, 8, 9, 1.0, n_cols=8)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="1 <= n_cols <= L"):
            window_scores_launch(2, 8, 8, 1, 1.0, n_cols=bad)
    launch = window_scores_launch(3, 8, 4, 1, 0.5, n_cols=8, groups=3)
    assert launch.output_shapes == ((3, 8), (3, 8))
    np.testing.assert_array_equal(launch.extra_inputs[0], [3, 8, 4, 1, 3, 8])
    with pytest.raises(ValueError, match="at least one head and one candidate"):
        retained_norms_launch(2, 0)
    bad = Launch(
        grid=(5, 1, 1), threadgroup=(2, 1, 1), output_shapes=((1,),), extra_inputs=(np.array([1, 1], np.int32),)
    )
    with pytest.raises(ValueError, match="not a multiple"):
        cpu_shim.build(retained_norms_spec())([np.ones((1, 1), np.float32)], bad)


@pytest.mark.parametrize("spec_fn", [window_scores_spec, retained_norms_spec])
def test_kernels_use_only_what_the_shim_emulates(spec_fn):
    # A construct the shim does not model would make the CPU tests meaningless for it: keep them out
    # of the kernels (or extend metal_shim.h and its list of limits first).
    import re

    code = re.sub(r"//[^\n]*", "", spec_fn().source)  # comments may mention anything
    for word in ("simd_", "quad_", "atomic", "half", "bfloat", "float4", "float2", "texture", "simdgroup"):
        assert word not in code, f"{spec_fn().name} uses {word!r}, which metal_shim.h does not emulate"


# ----------------------------------------------------------------------------------- random shapes
# hypothesis is a dev dependency; without it only these two tests are missing.
try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    hypothesis = None


if hypothesis is not None:

    @hypothesis.settings(max_examples=15, deadline=None)
    @hypothesis.given(
        heads=st.integers(1, 3),
        window=st.integers(1, 8),
        extra=st.integers(1, 120),
        dim=st.integers(1, 40),
        threads=st.sampled_from([1, 2, 8, 32]),
        seed=st.integers(0, 2**16),
    )
    def test_window_scores_random_shapes(heads, window, extra, dim, threads, seed):
        rng = np.random.default_rng(seed)
        q = rng.normal(size=(heads, window, dim)).astype(np.float32)
        k = rng.normal(size=(heads, window + extra, dim)).astype(np.float32)
        col, last = cpu_shim.shim_window_scores(q, k, dim**-0.5, window, threads=threads)
        ref_col, ref_last = REF.window_scores(q, k, dim**-0.5, window)
        np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)

    @hypothesis.settings(max_examples=15, deadline=None)
    @hypothesis.given(
        kv_heads=st.integers(1, 2),
        groups=st.integers(1, 3),
        rows=st.integers(1, 8),
        extra=st.integers(0, 60),
        cols_short=st.integers(0, 10),
        dim=st.integers(1, 24),
        threads=st.sampled_from([1, 4, 32]),
        seed=st.integers(0, 2**16),
    )
    def test_window_scores_n_cols_random_shapes(kv_heads, groups, rows, extra, cols_short, dim, threads, seed):
        rng = np.random.default_rng(seed)
        length = rows + extra
        n_cols = max(1, length - cols_short)
        q = rng.normal(size=(kv_heads * groups, rows, dim)).astype(np.float32)
        k = rng.normal(size=(kv_heads, length, dim)).astype(np.float32)
        col, last = cpu_shim.shim_window_scores(q, k, dim**-0.5, rows, threads=threads, n_cols=n_cols)
        ref_col, ref_last = REF.window_scores(q, k, dim**-0.5, rows, n_cols=n_cols)
        np.testing.assert_allclose(col, ref_col, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-6)

    @hypothesis.settings(max_examples=15, deadline=None)
    @hypothesis.given(
        heads=st.integers(1, 6),
        n=st.integers(1, 300),
        threads=st.sampled_from([1, 2, 3, 7, 32, 64]),
        seed=st.integers(0, 2**16),
    )
    def test_retained_norms_random_shapes(heads, n, threads, seed):
        rng = np.random.default_rng(seed)
        a = rng.random((heads, n)).astype(np.float32) ** 3  # skewed, like attention
        got = cpu_shim.shim_retained_norms(a, threads=threads)
        np.testing.assert_allclose(got, REF.retained_norms(a), rtol=1e-5, atol=1e-7)
