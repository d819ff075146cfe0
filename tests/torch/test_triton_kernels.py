"""The Triton kernels against the numpy reference, at the edges of their blocks.

Without a GPU the kernels run in Triton's CPU interpreter. The interpreter has to be chosen before
``triton`` is first imported (``TRITON_INTERPRET=1``), so this module imports triton itself with the
variable set, restores the environment, and sets the variable again only while its own tests run:
other tests keep the fast torch-op path, while ``TorchBackend(kernels="triton")`` here runs the
interpreted kernels. If something imported triton earlier in this pytest process without the variable
(transformers' model classes do), one test re-runs this file in a fresh process instead; by hand:
``TRITON_INTERPRET=1 pytest tests/torch/test_triton_kernels.py``. With a CUDA GPU the compiled kernels
are tested instead (not executed yet: no GPU was available while writing them).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ON_GPU = torch.cuda.is_available()
if not ON_GPU and "triton" not in sys.modules:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401  - builds triton.language for the interpreter
        import triton.experimental.gluon  # noqa: F401  - imported lazily at the first launch; it checks the flag too
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous

from cases import make_case  # noqa: E402
from refreekv_torch import TorchBackend, triton_kernels  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.halting import cut_from_ratio, ratio_from_norms  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
# False when something imported triton before this module without the interpreter (transformers'
# model classes do, in a full test run): then one test re-runs this file in a fresh process.
IN_PROCESS = ON_GPU or triton_kernels.interpreter_active()
FRESH_PROCESS_TEST = "test_kernels_in_a_fresh_process"


@pytest.fixture(autouse=True)
def _interpreter_flag(request, monkeypatch):
    """Triton also reads TRITON_INTERPRET while launching; keep it set during these tests only."""
    if request.node.name == FRESH_PROCESS_TEST:
        return
    if not IN_PROCESS:
        pytest.skip(f"triton was imported without TRITON_INTERPRET=1 before this module; {FRESH_PROCESS_TEST} runs it")
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.skipif(IN_PROCESS, reason="the kernel tests run directly in this process")
def test_kernels_in_a_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]  # e.g. "45 passed, 1 skipped in 20s": only this test skips
    assert re.search(r"\b[1-9]\d+ passed", summary) and "1 skipped" in summary, summary


REF = NumpyBackend()
TRITON = TorchBackend(kernels="triton")
# Same STRICT cases as the torch-op tests: no float32-level near-ties between candidates.
STRICT = ("gqa", "mha", "gqa_wide", "ties", "zeros", "peaked", "one_candidate")


def _dev(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).to(DEVICE)


def _random(heads: int, window: int, length: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((heads, window, dim)).astype(np.float32)
    k = rng.standard_normal((heads, length, dim)).astype(np.float32)
    return q, k


@pytest.mark.parametrize(
    ("heads", "window", "length", "dim"),
    [
        (2, 8, 9, 16),  # n = 1
        (3, 8, 72, 64),  # n = 64: exactly one key block
        (2, 8, 108, 32),  # n = 100: not a multiple of the block
        (1, 8, 200, 128),  # n > one block, D = 128
        (2, 4, 70, 24),  # w and D not powers of two (padded tiles)
        (1, 1, 40, 16),  # w = 1: the window is only the last token
    ],
)
def test_window_scores_match_reference(heads, window, length, dim):
    q, k = _random(heads, window, length, dim, seed=length)
    scale = 1.0 / np.sqrt(dim)
    col, last = triton_kernels.window_scores(_dev(q), _dev(k), scale, window)
    ref_col, ref_last = REF.window_scores(q, k, scale, window)
    np.testing.assert_allclose(col.cpu().numpy(), ref_col, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last.cpu().numpy(), ref_last, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("length", [259, 333])
def test_window_scores_split_over_key_chunks(monkeypatch, length):
    # Small chunks exercise the merge of per-chunk softmax statistics; at L = 259 the last chunk
    # [256, 259) lies entirely after row 0's position (251), so row 0 sees no key there (max = -inf).
    monkeypatch.setattr(triton_kernels, "STATS_CHUNK", 128)
    q, k = _random(2, 8, length, 16, seed=length)
    col, last = triton_kernels.window_scores(_dev(q), _dev(k), 0.25, 8)
    ref_col, ref_last = REF.window_scores(q, k, 0.25, 8)
    np.testing.assert_allclose(col.cpu().numpy(), ref_col, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last.cpu().numpy(), ref_last, rtol=1e-5, atol=1e-7)


def test_window_scores_take_strided_inputs():
    q, k = _random(2, 12, 90, 16, seed=3)
    q_view = _dev(q)[:, 4:, :]  # the core slices the last w queries: a non-contiguous view
    k_view = _dev(np.ascontiguousarray(k.transpose(1, 0, 2))).transpose(0, 1)  # (H, L, D) view of (L, H, D)
    col, last = triton_kernels.window_scores(q_view, k_view, 0.25, 8)
    ref_col, ref_last = REF.window_scores(q[:, 4:], k, 0.25, 8)
    np.testing.assert_allclose(col.cpu().numpy(), ref_col, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last.cpu().numpy(), ref_last, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "rows", "length", "n_cols"),
    [
        (4, 2, 1, 70, 70),  # the paper: the last row over all L keys, GQA G = 2, L not a multiple of the block
        (6, 2, 1, 64, 64),  # r = 1, L exactly one block, G = 3
        (4, 2, 8, 70, 70),  # 8 rows over all L: the last 8 columns are the rows' own positions (causal)
        (4, 2, 8, 70, 62),  # n_cols = L - r, given explicitly (the official script's default)
        (2, 2, 8, 130, 126),  # n_cols between L - r and L: columns 122..125 partly masked; MHA
        (8, 2, 8, 9, 9),  # L = r + 1, G = 4
        (3, 1, 1, 1, 1),  # a one-token prompt: the single row sees only itself
        (2, 1, 8, 8, 8),  # r = L: row 0 (position 0) sees one key
        (1, 1, 16, 200, 200),  # r = BLOCK_W, several column blocks, the mask in the last block only
    ],
)
def test_window_scores_n_cols_match_reference(heads, kv_heads, rows, length, n_cols):
    rng = np.random.default_rng(length * 31 + rows)
    q = rng.standard_normal((heads, rows, 24)).astype(np.float32)
    k = rng.standard_normal((kv_heads, length, 24)).astype(np.float32)
    col, last = triton_kernels.window_scores(_dev(q), _dev(k), 0.3, rows, n_cols)
    ref_col, ref_last = REF.window_scores(q, k, 0.3, rows, n_cols=n_cols)
    assert col.shape == last.shape == (heads, n_cols)
    np.testing.assert_allclose(col.cpu().numpy(), ref_col, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last.cpu().numpy(), ref_last, rtol=1e-5, atol=1e-7)
    if rows == 1 and n_cols == length:  # one softmax row per head over every key: it sums to 1
        np.testing.assert_allclose(last.sum(dim=1).cpu().numpy(), 1.0, rtol=1e-5)


def test_window_scores_n_cols_over_key_chunks(monkeypatch):
    # The paper path at a length that spans several pass-1 chunks, with the last chunk partly filled.
    monkeypatch.setattr(triton_kernels, "STATS_CHUNK", 128)
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((4, 1, 16)).astype(np.float32), rng.standard_normal((2, 300, 16)).astype(np.float32)
    col, last = triton_kernels.window_scores(_dev(q), _dev(k), 0.25, 1, 300)
    ref_col, ref_last = REF.window_scores(q, k, 0.25, 1, n_cols=300)
    np.testing.assert_allclose(col.cpu().numpy(), ref_col, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(last.cpu().numpy(), ref_last, rtol=1e-5, atol=1e-7)


def test_window_scores_reject_bad_shapes():
    with pytest.raises(ValueError, match="window_scores expects"):
        triton_kernels.window_scores(torch.zeros(2, 8, 16), torch.zeros(3, 20, 16), 0.25, 8)
    with pytest.raises(ValueError, match="n_cols"):
        triton_kernels.window_scores(torch.zeros(2, 1, 16), torch.zeros(2, 20, 16), 0.25, 1, 21)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (4, 7), (2, 64), (5, 129), (2, 3000)])
def test_retained_norms_matches_reference(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.dirichlet(np.ones(shape[1]), size=shape[0]).astype(np.float32)
    a_sorted = np.sort(a, axis=1)
    got = triton_kernels.retained_norms(_dev(a_sorted)).cpu().numpy()
    assert got.shape == (shape[1],)
    np.testing.assert_allclose(got, REF.retained_norms(a_sorted), rtol=1e-5, atol=1e-7)


def test_retained_norms_stay_finite_and_ordered_with_huge_dynamic_range():
    # One dominant entry last, thousands of tiny ones before it: total - prefix would underflow to
    # zero or below (NaN after sqrt); a reverse scan keeps every tail positive and non-increasing.
    a = np.full((1, 2500), 1e-6, np.float32)
    a[0, -1] = 1e3
    norms = triton_kernels.per_head_norms(_dev(a)).cpu().numpy()[0]
    assert np.all(np.isfinite(norms)) and np.all(norms >= 1e3)
    assert np.all(np.diff(norms) <= 0)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.3, 0.99])
def test_device_cut_matches_core_cut(threshold):
    rng = np.random.default_rng(7)
    a_sorted = np.sort(rng.dirichlet(np.ones(50), size=4).astype(np.float32), axis=1)
    norms = REF.retained_norms(a_sorted)
    expected = cut_from_ratio(ratio_from_norms(norms), threshold)
    assert triton_kernels.halting_cut(_dev(norms), threshold) == expected
    assert triton_kernels.halting_cut(_dev(np.zeros(5, np.float32)), threshold) == 4  # no attention: keep one
    assert triton_kernels.halting_cut(_dev(np.zeros(0, np.float32)), threshold) == 0


@pytest.mark.parametrize("case", STRICT)
@pytest.mark.parametrize(
    "policy",
    [
        rk.ReFreeKV.preset("official-script"),
        rk.ReFreeKV.preset("official-script", threshold=0.3, gqa="expand"),
        rk.FixedBudget(budget=0.4, ranking="snapkv"),
        rk.ReFreeKV(),  # the paper: r = 1, n_cols = L through the kernels
        rk.ReFreeKV.preset("sinks-in-metric", threshold=0.05),
        rk.ReFreeKV.preset("h2o-ranking", gqa="expand"),
    ],
    ids=repr,
)
def test_decisions_with_triton_kernels_match_reference(case, policy):
    q, k = make_case(case)
    ref = policy.decide_layer(q, k, backend="numpy")
    got = policy.decide_layer(_dev(q), _dev(k), backend=TRITON)
    assert got.n_evicted == ref.n_evicted
    np.testing.assert_array_equal(got.kept, ref.kept)
    np.testing.assert_array_equal(got.order, ref.order)
    np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got.last_attn, ref.last_attn, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "preset"), [("short", "official-script"), ("equal", "official-script"), ("tiny", "paper")]
)
def test_prompts_without_candidates_never_launch_a_kernel(monkeypatch, case, preset):
    def fail(*args, **kwargs):
        raise AssertionError("a kernel was launched although L <= m + w")

    monkeypatch.setattr(triton_kernels, "window_scores", fail)
    monkeypatch.setattr(triton_kernels, "retained_norms", fail)
    if case == "tiny":  # L = 4 = the paper's sinks: no candidate
        rng = np.random.default_rng(0)
        q, k = rng.standard_normal((4, 1, 16)).astype(np.float32), rng.standard_normal((2, 4, 16)).astype(np.float32)
    else:
        q, k = make_case(case)
    policy = rk.ReFreeKV.preset(preset)
    ref = policy.decide_layer(q, k)
    got = policy.decide_layer(_dev(q), _dev(k), backend=TRITON)
    np.testing.assert_array_equal(got.kept, ref.kept)
    assert got.n_evicted == 0


def test_auto_mode_picks_triton_only_when_it_can_run(monkeypatch):
    auto = TorchBackend(kernels="auto")
    if ON_GPU:
        assert auto.kernel_path(torch.zeros(1, device="cuda"))[0] == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert auto.kernel_path(torch.zeros(1))[0] == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert auto.kernel_path(torch.zeros(1))[0] == "torch"


def test_auto_mode_falls_back_to_torch_ops_for_the_failing_call_only(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(triton_kernels, "window_scores", broken)
    q, k = make_case("gqa")
    ref = rk.ReFreeKV().decide_layer(q, k)
    auto = TorchBackend(kernels="auto")
    assert auto.kernel_path(_dev(k))[0] == "triton"
    for _ in range(2):  # every call tries the kernel again, and says so when it falls back
        with pytest.warns(RuntimeWarning, match="simulated compiler failure.*this call uses torch ops"):
            got = rk.ReFreeKV().decide_layer(_dev(q), _dev(k), backend=auto)
        np.testing.assert_array_equal(got.kept, ref.kept)
        assert auto.kernel_path(_dev(k))[0] == "triton"  # nothing remembered: the backend holds no state
    with pytest.raises(RuntimeError, match="simulated"):  # an explicit kernels="triton" never hides failures
        rk.ReFreeKV().decide_layer(_dev(q), _dev(k), backend=TorchBackend(kernels="triton"))


def test_auto_mode_does_not_hide_bad_input():
    auto = TorchBackend(kernels="auto")
    with pytest.raises(triton_kernels.KernelInputError, match="window_scores expects"):
        auto.window_scores(_dev(np.zeros((2, 8, 16), np.float32)), _dev(np.zeros((3, 20, 16), np.float32)), 0.25, 8)
    assert auto.kernel_path(_dev(np.zeros(1, np.float32)))[0] == "triton"
