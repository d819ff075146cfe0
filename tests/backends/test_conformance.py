"""The shared backend conformance suite: every installed backend must agree with the numpy reference.

Backends are found through the ``refreekv_edu.backends`` entry points; one that does not import
here (mlx on a machine without it, say) is skipped with the reason. Decisions must be identical
(same ``e*``, same kept sets, same order); float results agree to float32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASES, make_case

import refreekv_edu as rk
from refreekv_edu.backend import available_backends, get_backend

REFERENCE = get_backend("numpy")
# Cases whose candidate scores are equal up to float32 rounding (near-uniform attention, or
# attention that underflows near 0 where exp implementations differ in the last bits).
NEAR_TIES = {"flat", "peaked"}
BACKENDS = [info.name for info in available_backends()]
OFFICIAL = rk.ReFreeKV.preset("official-script")
POLICIES = [
    # The official script, pinned exactly as before the paper became the default.
    OFFICIAL,
    rk.ReFreeKV.preset("official-script", threshold=0.3),
    rk.ReFreeKV.preset("official-script", threshold=0.0),
    rk.ReFreeKV.preset("official-script", gqa="expand"),
    rk.ReFreeKV.preset("official-script", ranking="snapkv"),
    rk.FixedBudget(budget=0.4, ranking="snapkv"),
    rk.FullCache(),
    # The paper and its ablations: sinks, recency, the single-row signal.
    rk.ReFreeKV(),
    rk.ReFreeKV(threshold=0.2),
    rk.ReFreeKV(gqa="expand"),
    rk.ReFreeKV.preset("sinks-in-metric", threshold=0.2),
    rk.ReFreeKV.preset("h2o-ranking"),
    rk.ReFreeKV(sinks=2, window=8, threshold=0.2),
    rk.FixedBudget(budget=0.4, ranking="recency", sinks=4, window=0),
]
# A layer that every policy prunes, and a full layer of the paper (decided without computing anything).
LAYERS = [5, 1]


@pytest.fixture(params=BACKENDS)
def backend(request):
    info = next(i for i in available_backends() if i.name == request.param)
    if not info.available:
        pytest.skip(f"backend {info.name} not usable here: {info.reason}")
    return get_backend(info.name)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("layer", LAYERS)
def test_decisions_match_reference(backend, case, policy, layer):
    q, k = make_case(case)
    ref = policy.decide_layer(q, k, backend=REFERENCE, layer=layer)
    got = policy.decide_layer(backend.asarray(q), backend.asarray(k), backend=backend, layer=layer)
    assert got.n_evicted == ref.n_evicted
    assert got.full_layer == ref.full_layer == (not policy.prunes_layer(layer))
    assert got.sinks == ref.sinks and got.window == ref.window
    np.testing.assert_allclose(got.sink_attn, ref.sink_attn, rtol=1e-4, atol=1e-6)
    if case in NEAR_TIES:
        # Scores differ only in float32 rounding, which depends on each backend's summation order:
        # the order must still sort the reference scores (within rounding), not match index for index.
        if ref.order.shape[1] > 1:
            steps = np.diff(np.take_along_axis(ref.scores, got.order, axis=1), axis=1)
            assert steps.min() >= -1e-6 * max(1.0, float(np.abs(ref.scores).max()))
    else:
        np.testing.assert_array_equal(got.kept, ref.kept)
        np.testing.assert_array_equal(got.order, ref.order)
    np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got.last_attn, ref.last_attn, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c not in {"short", "equal"}])
@pytest.mark.parametrize("rows,cols", [(8, None), (8, "all"), (1, "all"), (1, "half")], ids=str)
def test_fused_window_scores_match_reference(backend, case, rows, cols):
    """(8, None): the official script's window; (1, all): the paper's single q K^T row over every key."""
    q, k = make_case(case)
    q = q[:, -rows:]
    length = k.shape[1]
    n_cols = {None: None, "all": length, "half": length // 2}[cols]
    scale = 1.0 / np.sqrt(q.shape[-1])
    ref_col, ref_last = REFERENCE.window_scores(q, k, scale, rows, n_cols=n_cols)
    assert ref_last.shape == (q.shape[0], length - rows if n_cols is None else n_cols)
    # Keys stay at Hkv heads (query head h reads KV head h // G); repeating them must not change anything.
    for keys in (k, np.repeat(k, q.shape[0] // k.shape[0], axis=0)):
        col, last = backend.window_scores(backend.asarray(q), backend.asarray(keys), scale, rows, n_cols=n_cols)
        np.testing.assert_allclose(backend.to_numpy(col), ref_col, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(backend.to_numpy(last), ref_last, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (4, 7), (2, 64), (5, 129), (2, 1000)])
def test_fused_retained_norms_matches_reference(backend, shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.dirichlet(np.ones(shape[1]), size=shape[0]).astype(np.float32)
    a_sorted = np.sort(a, axis=1)
    ref = REFERENCE.retained_norms(a_sorted)
    got = backend.to_numpy(backend.retained_norms(backend.asarray(a_sorted)))
    assert got.shape == (shape[1],)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(got)), "reverse scan produced NaN/inf (total - prefix?)"


def test_vocabulary_reverse_cumsum_and_stable_argsort(backend):
    x = np.array([[3.0, 1.0, 1.0, 2.0, 1.0]], np.float32)
    np.testing.assert_allclose(backend.to_numpy(backend.cumsum(backend.asarray(x), reverse=True)), [[8, 5, 4, 3, 1]])
    np.testing.assert_array_equal(backend.to_numpy(backend.argsort(backend.asarray(x))), [[1, 2, 4, 3, 0]])
    pooled = backend.to_numpy(backend.max_pool1d(backend.asarray(np.arange(10, dtype=np.float32)[None]), 7))
    np.testing.assert_allclose(pooled, [[3, 4, 5, 6, 7, 8, 9, 9, 9, 9]])
