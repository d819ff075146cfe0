"""CompactedKVCache on its own: compaction, logical offset vs physical rows, masks, bytes, (de)serialisation.

No model here: keys/values are random arrays, and every expectation is computed by hand
(numpy gathers, brute-force attention).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'refreekv_edu[mlx]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'refreekv_edu[mlx]')")

import mlx_lm.models.cache as mlx_cache  # noqa: E402
from mlx_lm.models.cache import KVCache, save_prompt_cache  # noqa: E402
from refreekv_mlx.cache import CompactedKVCache, load_prompt_cache, register_with_mlx_lm  # noqa: E402

HKV, L, D = 2, 12, 4


def _prompt(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(1, HKV, L, D)).astype(np.float32), rng.normal(size=(1, HKV, L, D)).astype(np.float32)


KEPT = np.array([[0, 3, 5, 9, 10, 11], [1, 2, 7, 9, 10, 11]])  # (Hkv, 6): different positions per head


def _compressed(seed: int = 0) -> tuple[CompactedKVCache, np.ndarray, np.ndarray]:
    k, v = _prompt(seed)
    return CompactedKVCache.from_kept(mx.array(k), mx.array(v), KEPT), k, v


def test_from_kept_gathers_the_kept_rows_of_each_head():
    cache, k, v = _compressed()
    assert cache.offset == L and cache.rows == KEPT.shape[1]
    assert cache.keys.shape == (1, HKV, KEPT.shape[1], D)
    for h in range(HKV):
        np.testing.assert_array_equal(np.array(cache.keys[0, h]), k[0, h, KEPT[h]])
        np.testing.assert_array_equal(np.array(cache.values[0, h]), v[0, h, KEPT[h]])
    np.testing.assert_array_equal(np.array(cache.valid_positions), KEPT)


def test_one_kept_set_for_all_heads_is_one_slice_at_kv_heads():
    """The recency ranking keeps the same positions in every KV head: the compacted cache is k[:, :, kept]."""
    k, v = _prompt(4)
    shared = np.array([0, 1, 2, 3, 8, 9, 10, 11])
    kept = np.tile(shared, (HKV, 1))
    cache = CompactedKVCache.from_kept(mx.array(k), mx.array(v), kept)
    assert cache.keys.shape == (1, HKV, shared.size, D) and cache.rows == shared.size and cache.offset == L
    np.testing.assert_array_equal(np.array(cache.keys), k[:, :, shared])
    np.testing.assert_array_equal(np.array(cache.values), v[:, :, shared])
    np.testing.assert_array_equal(np.array(cache.valid_positions), kept)
    assert cache.nbytes == 2 * HKV * shared.size * D * 4
    # A single KV head: the same slice.
    single = CompactedKVCache.from_kept(mx.array(k[:, :1]), mx.array(v[:, :1]), shared[None])
    np.testing.assert_array_equal(np.array(single.keys), k[:, :1, shared])


def test_nbytes_counts_kept_rows_of_kv_heads_only():
    cache, _, _ = _compressed()
    assert cache.nbytes == 2 * HKV * KEPT.shape[1] * D * 4
    full = KVCache()
    k, v = _prompt()
    full.update_and_fetch(mx.array(k), mx.array(v))
    compacted = CompactedKVCache.from_kv_cache(full, KEPT)
    assert compacted.nbytes == cache.nbytes < full.nbytes


def test_update_keeps_logical_offset_apart_from_rows():
    cache, _, _ = _compressed()
    rng = np.random.default_rng(1)
    for step in range(3):
        new_k = mx.array(rng.normal(size=(1, HKV, 1, D)).astype(np.float32))
        keys, values = cache.update_and_fetch(new_k, new_k)
        assert cache.offset == L + step + 1  # what RoPE reads
        assert cache.rows == KEPT.shape[1] + step + 1  # what attention reads
        assert keys.shape == (1, HKV, cache.rows, D)
        np.testing.assert_array_equal(np.array(keys[:, :, -1:]), np.array(new_k))
    np.testing.assert_array_equal(np.array(cache.valid_positions[:, -3:]), np.tile([L, L + 1, L + 2], (HKV, 1)))


def test_buffer_grows_past_the_step_and_keeps_old_rows():
    cache, k, _ = _compressed()
    chunk = mx.ones((1, HKV, CompactedKVCache.step + 5, D))
    keys, _ = cache.update_and_fetch(chunk, chunk)
    assert cache.rows == KEPT.shape[1] + CompactedKVCache.step + 5
    np.testing.assert_array_equal(np.array(keys[0, 0, : KEPT.shape[1]]), k[0, 0, KEPT[0]])


def test_make_mask_none_for_one_token_causal_for_chunks():
    cache, _, _ = _compressed()
    assert cache.make_mask(1) is None
    assert cache.make_mask(3) == "causal"
    mask = np.array(cache.make_mask(3, return_array=True))
    rows = KEPT.shape[1]
    assert mask.shape == (3, rows + 3)
    assert mask[:, :rows].all()  # every kept row is older than every new token
    np.testing.assert_array_equal(mask[:, rows:], np.tril(np.ones((3, 3), bool)))
    with pytest.raises(ValueError, match="sliding-window"):
        cache.make_mask(2, window_size=4)


def test_causal_string_mask_is_bottom_right_aligned_in_mlx_attention():
    """The "causal" mask our make_mask returns must let query i see rows <= rows + i (checked by brute force)."""
    rng = np.random.default_rng(2)
    q = rng.normal(size=(1, 2, 3, D)).astype(np.float32)
    k = rng.normal(size=(1, 2, 7, D)).astype(np.float32)
    v = rng.normal(size=(1, 2, 7, D)).astype(np.float32)
    got = np.array(
        mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.5, mask="causal")
    )
    logits = 0.5 * q @ k.transpose(0, 1, 3, 2)
    allowed = np.arange(7)[None, :] <= (7 - 3 + np.arange(3))[:, None]
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, probs @ v, rtol=1e-5, atol=1e-5)


def test_bad_kept_shapes_raise_clear_errors():
    k, v = _prompt()
    with pytest.raises(ValueError, match="gqa='group'"):
        CompactedKVCache.from_kept(mx.array(k), mx.array(v), np.zeros((4, 3), np.int64))
    with pytest.raises(ValueError, match=r"lie in \[0, 12\)"):
        CompactedKVCache.from_kept(mx.array(k), mx.array(v), np.full((HKV, 2), 12))
    with pytest.raises(ValueError, match="batch > 1"):
        CompactedKVCache.from_kept(mx.array(np.concatenate([k, k])), mx.array(np.concatenate([v, v])), KEPT)
    with pytest.raises(RuntimeError, match="from_kept"):
        CompactedKVCache().update_and_fetch(mx.ones((1, 1, 1, D)), mx.ones((1, 1, 1, D)))


def _assert_same_cache(a: CompactedKVCache, b: CompactedKVCache) -> None:
    assert (a.offset, a.rows) == (b.offset, b.rows)
    np.testing.assert_array_equal(np.array(a.valid_keys), np.array(b.valid_keys))
    np.testing.assert_array_equal(np.array(a.valid_values), np.array(b.valid_values))
    np.testing.assert_array_equal(np.array(a.valid_positions), np.array(b.valid_positions))


def test_save_and_load_prompt_cache_round_trip(tmp_path):
    cache, _, _ = _compressed()
    cache.update_and_fetch(mx.ones((1, HKV, 2, D)), mx.ones((1, HKV, 2, D)))  # some decoded rows too
    full = KVCache()
    full.update_and_fetch(*(mx.array(a) for a in _prompt(3)))
    path = str(tmp_path / "cache.safetensors")
    save_prompt_cache(path, [cache, full], metadata={"model": "tiny"})
    loaded, meta = load_prompt_cache(path, return_metadata=True)
    assert meta == {"model": "tiny"}
    assert isinstance(loaded[0], CompactedKVCache) and isinstance(loaded[1], KVCache)
    _assert_same_cache(loaded[0], cache)
    # The loaded cache keeps working: appending continues at the logical offset.
    loaded[0].update_and_fetch(mx.zeros((1, HKV, 1, D)), mx.zeros((1, HKV, 1, D)))
    assert loaded[0].offset == L + 3 and loaded[0].rows == KEPT.shape[1] + 3


def test_mlx_lm_loader_needs_explicit_registration(tmp_path, monkeypatch):
    cache, _, _ = _compressed()
    path = str(tmp_path / "cache.safetensors")
    save_prompt_cache(path, [cache])
    # Nothing is registered on import ...
    monkeypatch.delattr(mlx_cache, "CompactedKVCache", raising=False)
    monkeypatch.delattr(mlx_cache, "CompressedKVCache", raising=False)
    with pytest.raises(KeyError):
        mlx_cache.load_prompt_cache(path)
    # ... register_with_mlx_lm() makes mlx-lm's own loader work (monkeypatch undoes it after the test).
    monkeypatch.setattr(mlx_cache, "CompactedKVCache", None, raising=False)
    monkeypatch.setattr(mlx_cache, "CompressedKVCache", None, raising=False)
    register_with_mlx_lm()
    _assert_same_cache(mlx_cache.load_prompt_cache(path)[0], cache)
