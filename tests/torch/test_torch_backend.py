"""The torch backend's array vocabulary and kernel dispatch, against the numpy reference (CPU, no Triton needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import CASES, make_case  # noqa: E402
from refreekv_torch import TorchBackend  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

REF = NumpyBackend()
BE = TorchBackend(kernels="torch")
# Cases without float32-level near-ties: any correct float32 implementation must pick the same sets.
# ("flat" has candidates whose scores differ by 1 ulp; torch.exp and np.exp may round them differently.)
STRICT = ("gqa", "mha", "gqa_wide", "ties", "zeros", "peaked", "short", "equal", "one_candidate")


def _t(x):
    return BE.to_numpy(x)


def test_asarray_converts_numpy_lists_and_tensors_to_float32_or_int64():
    assert BE.asarray([[1, 2]]).dtype == torch.float32
    assert BE.asarray(np.arange(3), dtype="int64").dtype == torch.int64
    t = torch.ones(2, 3, dtype=torch.float64)
    assert BE.asarray(t).dtype == torch.float32
    assert BE.is_native(t) and not BE.is_native(np.ones(2))
    np.testing.assert_array_equal(_t(BE.asarray(np.eye(3, dtype=np.float64))), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="dtype must be one of"):
        BE.asarray([1.0], dtype="float16")


def test_to_numpy_handles_bfloat16():
    x = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    np.testing.assert_array_equal(BE.to_numpy(x), np.array([1.5, -2.0], np.float32))


def test_all_finite():
    assert BE.all_finite(torch.ones(3))
    assert not BE.all_finite(torch.tensor([1.0, float("nan")]))
    assert not BE.all_finite(torch.tensor([float("inf")]))


def test_reverse_cumsum_is_a_scan_that_never_goes_negative():
    x = np.array([[3.0, 1.0, 1.0, 2.0, 1.0]], np.float32)
    np.testing.assert_array_equal(_t(BE.cumsum(BE.asarray(x), reverse=True)), [[8, 5, 4, 3, 1]])
    np.testing.assert_array_equal(_t(BE.cumsum(BE.asarray(x))), [[3, 4, 5, 7, 8]])
    # One big value then tiny ones: total - prefix would cancel to 0 or below; a reverse scan keeps them.
    y = np.array([1e4] + [1e-6] * 50, np.float32)[None]
    got = _t(BE.cumsum(BE.asarray(y * y), reverse=True))
    np.testing.assert_allclose(got[0, 1:], 1e-12 * np.arange(50, 0, -1), rtol=1e-5)
    axis0 = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(_t(BE.cumsum(BE.asarray(axis0), axis=0, reverse=True)), REF.cumsum(axis0, 0, True))


def test_argsort_is_stable():
    x = np.array([[2.0, 1.0, 2.0, 1.0, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(_t(BE.argsort(BE.asarray(x))), [[4, 1, 3, 5, 0, 2]])
    assert BE.argsort(BE.asarray(x)).dtype == torch.int64


@pytest.mark.parametrize("kernel", [1, 2, 3, 7, 8])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_max_pool1d_matches_reference_same_size(kernel, n):
    x = np.random.default_rng(n * 10 + kernel).standard_normal((2, n)).astype(np.float32)
    got = _t(BE.max_pool1d(BE.asarray(x), kernel))
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, REF.max_pool1d(x, kernel))


def test_small_ops_match_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    idx = np.argsort(x, axis=1, kind="stable")
    np.testing.assert_array_equal(
        _t(BE.take_along_axis(BE.asarray(x), BE.asarray(idx, "int64"), -1)), np.take_along_axis(x, idx, 1)
    )
    np.testing.assert_array_equal(_t(BE.repeat_heads(BE.asarray(x), 3)), REF.repeat_heads(x, 3))
    np.testing.assert_allclose(_t(BE.group_sum(BE.asarray(x), 3)), REF.group_sum(x, 3), rtol=1e-6)
    np.testing.assert_allclose(_t(BE.softmax(BE.asarray(x))), REF.softmax(x), rtol=1e-6)
    np.testing.assert_array_equal(_t(BE.causal_window_mask(3, 6)), REF.causal_window_mask(3, 6))
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(_t(BE.matmul(BE.asarray(a), BE.asarray(b))), a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_t(BE.mean(BE.sqrt(BE.asarray(x * x)), 0)), np.abs(x).mean(0), rtol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c not in {"short", "equal"}])
def test_torch_fused_ops_match_reference(case):
    q, k = make_case(case)
    length = k.shape[1]
    # (r, n_cols): the official script's window (8, L - 8), the paper's last row (1, L), 8 rows over all L keys
    for rows, n_cols in ((8, None), (1, length), (8, length)):
        q_rows = np.ascontiguousarray(q[:, -rows:])
        col, last = BE.window_scores(BE.asarray(q_rows), BE.asarray(k), 0.25, rows, n_cols)  # keys at Hkv heads
        ref_col, ref_last = REF.window_scores(q_rows, k, 0.25, rows, n_cols=n_cols)
        np.testing.assert_allclose(_t(col), ref_col, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_t(last), ref_last, rtol=1e-5, atol=1e-7)
    a_sorted = np.sort(ref_last, axis=1)
    np.testing.assert_allclose(_t(BE.retained_norms(BE.asarray(a_sorted))), REF.retained_norms(a_sorted), rtol=1e-5)


def test_window_scores_without_candidates_is_empty():
    col, last = BE.window_scores(torch.ones(2, 8, 4), torch.ones(2, 8, 4), 0.5, 8)
    assert col.shape == (2, 0) and last.shape == (2, 0)


@pytest.mark.parametrize("case", STRICT)
@pytest.mark.parametrize(
    "policy",
    [
        rk.ReFreeKV.preset("official-script"),
        rk.ReFreeKV.preset("official-script", gqa="expand"),
        rk.ReFreeKV.preset("official-script", ranking="snapkv"),
        rk.ReFreeKV.preset("official-script", ranking="recency", threshold=0.2),
        rk.ReFreeKV(),
        rk.ReFreeKV.preset("paper", threshold=0.2, gqa="expand"),
        rk.ReFreeKV.preset("sinks-in-metric"),
        rk.ReFreeKV.preset("h2o-ranking", threshold=0.2),
    ],
    ids=repr,
)
def test_decide_layer_on_torch_tensors_matches_reference(case, policy):
    q, k = make_case(case)
    ref = policy.decide_layer(q, k, backend="numpy")
    got = policy.decide_layer(torch.from_numpy(q), torch.from_numpy(k), backend="auto")  # auto -> torch by type
    assert got.n_evicted == ref.n_evicted
    np.testing.assert_array_equal(got.kept, ref.kept)
    np.testing.assert_allclose(got.curve, ref.curve, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("preset", ["official-script", "paper"])
def test_decide_layer_accepts_batch_one_and_longer_query_block(preset):
    policy = rk.ReFreeKV.preset(preset)
    q, k = make_case("gqa")
    q_long = np.concatenate([np.ones((6, 3, 16), np.float32), q], axis=1)  # r = 11: only the last query_rows count
    ref = policy.decide_layer(q, k)
    got = policy.decide_layer(torch.from_numpy(q_long)[None], torch.from_numpy(k)[None], backend=BE)
    np.testing.assert_array_equal(got.kept, ref.kept)
    with pytest.raises(ValueError, match="batch size 2"):
        policy.decide_layer(torch.zeros(2, 6, 8, 16), torch.zeros(2, 2, 50, 16), backend=BE)


def test_flat_case_agrees_up_to_one_ulp_near_ties():
    """Near-uniform attention: orders may differ only among candidates whose reference scores are (almost) tied."""
    q, k = make_case("flat")
    policy = rk.ReFreeKV.preset("official-script")
    ref = policy.decide_layer(q, k)
    got = policy.decide_layer(torch.from_numpy(q), torch.from_numpy(k), backend=BE)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-6)
    ref_scores_in_got_order = np.take_along_axis(ref.scores, got.order, axis=1)
    assert np.all(np.diff(ref_scores_in_got_order, axis=1) >= -1e-6 * ref.scores.max())
    assert abs(got.n_evicted - ref.n_evicted) <= 1


def test_kernel_modes_and_errors(monkeypatch):
    cpu = torch.zeros(1)
    assert TorchBackend(kernels="torch").kernel_path(cpu)[0] == "torch"
    if importlib.util.find_spec("triton") is not None:
        assert TorchBackend(kernels="triton").kernel_path(cpu)[0] == "triton"
    else:  # the torch extra alone: asking for Triton says how to get it
        with pytest.raises(ValueError, match=r"needs the triton package: pip install 'refreekv_edu\[triton\]'"):
            TorchBackend(kernels="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    path, reason = TorchBackend(kernels="auto").kernel_path(cpu)
    assert path == "torch" and reason
    monkeypatch.setenv("REFREEKV_TORCH_KERNELS", "torch")
    assert TorchBackend().kernels == "torch"
    monkeypatch.setenv("REFREEKV_TORCH_KERNELS", "cuda")
    with pytest.raises(ValueError, match="REFREEKV_TORCH_KERNELS"):
        TorchBackend()
    with pytest.raises(ValueError, match="kernels must be one of"):
        TorchBackend(kernels="metal")


def test_the_backend_holds_no_state_between_calls():
    """The device is explicit (``device=``, ``on()``) or the inputs'; nothing seen in one call changes the next."""
    fixed = TorchBackend(kernels="torch", device="meta")
    assert fixed.asarray(np.ones(2)).device.type == "meta"
    assert fixed.asarray(torch.ones(2)).device.type == "meta"
    free = TorchBackend(kernels="auto")
    state = dict(vars(free))
    assert free.asarray(torch.ones(2, device="meta")).device.type == "meta"  # a tensor keeps its device
    assert free.asarray([1.0]).device.type == "cpu"  # and is not remembered: numpy goes to the CPU
    q, k = make_case("gqa")
    for policy in (rk.ReFreeKV(), rk.ReFreeKV.preset("official-script"), rk.FixedBudget(budget=0.5, ranking="snapkv")):
        policy.decide_layer(torch.from_numpy(q), torch.from_numpy(k), backend=free)
    assert vars(free) == state
    pinned = free.on("meta")
    assert pinned.device.type == "meta" and pinned.kernels == free.kernels and free.device is None
    assert pinned.on("meta") is pinned
    # a helper index built from numpy (the recency order) goes where the data is
    data = torch.zeros(2, 3, device="meta")
    assert free.take_along_axis(data, free.asarray(np.zeros((2, 3)), "int64"), axis=1).device.type == "meta"


def test_a_bad_kernels_variable_is_named_wherever_the_backend_is_made(monkeypatch):
    from refreekv_edu import backend as registry

    monkeypatch.setenv("REFREEKV_TORCH_KERNELS", "bogus")
    monkeypatch.setattr(registry, "_cache", {})  # make the registry build its backends again
    q, k = make_case("gqa")
    for make in (
        lambda: rk.get_backend("torch"),
        lambda: rk.ReFreeKV().decide_layer(torch.from_numpy(q), torch.from_numpy(k), backend="auto"),
        lambda: rk.generate(torch.nn.Linear(2, 2), None, [1, 2]),
    ):
        with pytest.raises(ValueError, match="REFREEKV_TORCH_KERNELS must be one of auto, triton, torch .*'bogus'"):
            make()


def test_registry_describe_and_model_ownership():
    be = rk.get_backend("torch")
    assert isinstance(be, TorchBackend)
    text = be.describe()
    assert f"torch {torch.__version__}" in text and "fused ops:" in text
    assert be.has_cuda() == torch.cuda.is_available()

    class WithConfig(torch.nn.Module):
        config = object()

    assert be.owns_model(WithConfig())
    assert not be.owns_model(torch.nn.Linear(2, 2))
    assert not be.owns_model(object())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_compile_for_nvidia_gpus_offline():
    """Compile (not run) the kernels to CUDA binaries for Hopper (D=128) and Ampere (D=64), no GPU needed.

    A fresh interpreter, because this test process may have Triton in interpreter mode.
    """
    code = (
        "from refreekv_torch.triton_kernels import compile_offline\n"
        "for cap, dim in ((90, 128), (80, 64)):\n"
        "    kernels = compile_offline(cap, head_dim=dim)\n"
        "    assert set(kernels) == {'window_stats', 'window_probs', 'reverse_norm_scan'}\n"
        "    assert all(len(k.asm['cubin']) > 0 for k in kernels.values())\n"
        "    assert f'.target sm_{cap}' in kernels['window_probs'].asm['ptx']\n"
        "print('compiled')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence Triton 3.9's notice; fusion on is its current default
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_finds_one_bad_value_anywhere(bad, dtype):
    x = torch.randn(3, 50, 8).to(dtype)
    assert BE.all_finite(x)
    x[1, 37, 5] = bad
    assert not BE.all_finite(x)
    assert BE.all_finite(torch.zeros(0)) and BE.all_finite(torch.arange(3))


def test_next_to_pins_arrays_the_pipeline_creates_to_the_keys_device():
    free = TorchBackend(kernels="torch")
    pinned = free.next_to(torch.zeros(2, 3, device="meta"))
    assert pinned is not free and pinned.device == torch.device("meta")
    assert pinned.asarray(np.arange(3)).device == torch.device("meta")  # numpy goes where the keys are
    explicit = TorchBackend(kernels="torch", device="cpu")
    assert explicit.next_to(torch.zeros(1, device="meta")) is explicit  # an explicit device wins
