"""A compacted KV cache for mlx-lm: fewer physical rows than logical positions.

mlx-lm's ``KVCache.offset`` means two things at once: the RoPE position of the next token *and*
the number of rows in the cache. After ReFreeKV evicts prompt rows those two numbers differ, so
:class:`CompactedKVCache` keeps them apart:

* ``offset``: the logical position of the next token (prompt length + tokens decoded since).
  mlx-lm's attention modules read ``cache.offset`` as the RoPE offset, so this must stay logical.
* ``rows``: how many key/value rows each KV head actually holds (kept prompt rows + decoded rows).

Every KV head holds the same number of rows (dense arrays). *Which* prompt positions it kept may differ
per head (an H2O/SnapKV ranking with ``gqa="group"``) or be one set for all heads (the paper's recency
ranking: then compaction is a single slice along the row axis); ``positions`` ``(Hkv, rows)`` records
them, for teaching and for tests.

Decoded tokens are appended and never evicted (as in the paper).

It plugs into mlx-lm unchanged (``model(tokens, cache=[...])``, ``generate_step(prompt_cache=...)``)
and round-trips through ``mlx_lm.models.cache.save_prompt_cache``; load it back with mlx-lm's own
``load_prompt_cache`` after :func:`register_with_mlx_lm` (which :func:`load_prompt_cache` here does for you).
The torch integration's compacted cache layer has the same name (``refreekv_torch.hf_cache.CompactedKVCache``).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, _BaseCache

from refreekv_edu.integration import shared_positions


class CompactedKVCache(_BaseCache):
    """Kept prompt rows per KV head, plus every decoded row, with the logical offset kept apart.

    Arrays (batch ``B = 1``):
        keys, values: ``(1, Hkv, capacity, D)`` buffers; the first ``rows`` rows are valid.
        positions: ``(Hkv, capacity)`` int32 logical position of each row (valid for the first ``rows``).
    """

    #: Buffer growth for decoded rows (like mlx-lm's ``KVCache.step``): one allocation per 256 tokens.
    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.positions: mx.array | None = None
        self.offset = 0  # logical position of the next token (RoPE offset)
        self.rows = 0  # physical rows held per KV head

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_kept(
        cls, keys: mx.array, values: mx.array, kept: np.ndarray, prompt_len: int | None = None
    ) -> CompactedKVCache:
        """Compact a full prompt cache down to the kept rows of each KV head.

        Args:
            keys, values: ``(1, Hkv, L, D)`` (or ``(Hkv, L, D)``) the prompt's post-RoPE keys and values.
            kept: ``(Hkv, n_kept)`` int, kept positions per KV head (ascending; same count per head). When every
                row is the same (the recency ranking) the rows are gathered with one ``take`` at ``Hkv`` heads.
            prompt_len: ``L``, the logical length (defaults to ``keys.shape[-2]``).

        Returns:
            a cache with ``rows = n_kept`` and ``offset = L``; the full arrays are not referenced.
        """
        if keys.ndim == 3:
            keys, values = keys[None], values[None]
        if keys.ndim != 4 or keys.shape[0] != 1:
            raise ValueError(f"keys must be (1, Hkv, L, D); got shape {tuple(keys.shape)} (batch > 1 is not supported)")
        n_kv_heads, length = keys.shape[1], keys.shape[2]
        kept = np.asarray(kept)
        if kept.ndim != 2 or kept.shape[0] != n_kv_heads:
            raise ValueError(
                f"kept must be (Hkv={n_kv_heads}, n_kept); got shape {kept.shape}. "
                "With gqa='expand' a GQA model's cache cannot be compacted per KV head: use gqa='group'."
            )
        if kept.size and (kept.min() < 0 or kept.max() >= length):
            raise ValueError(f"kept positions must lie in [0, {length}); got range [{kept.min()}, {kept.max()}]")
        index = mx.array(kept.astype(np.int32))
        obj = cls()
        if shared_positions(kept) is not None:
            # One kept set for every KV head (always with the recency ranking): one take along the row axis.
            obj.keys = mx.take(keys, index[0], axis=2)
            obj.values = mx.take(values, index[0], axis=2)
        else:
            gather = index[None, :, :, None]  # (1, Hkv, n_kept, 1), broadcast over D
            obj.keys = mx.take_along_axis(keys, gather, axis=2)
            obj.values = mx.take_along_axis(values, gather, axis=2)
        obj.positions = index
        obj.rows = int(kept.shape[1])
        obj.offset = int(length if prompt_len is None else prompt_len)
        # Materialise now so the full-length arrays can be freed.
        mx.eval(obj.keys, obj.values, obj.positions)
        return obj

    @classmethod
    def from_kv_cache(cls, cache: KVCache, kept: np.ndarray) -> CompactedKVCache:
        """Compact an mlx-lm ``KVCache`` holding exactly the prompt (``cache.offset == L``).

        Args:
            cache: the layer's cache after prefill; its keys and values are ``(1, Hkv, capacity, D)``, of which
                the first ``cache.offset`` rows are read (the rest is buffer slack).
            kept: ``(Hkv, n_kept)`` int, kept positions per KV head (ascending; same count per head).

        Returns:
            a cache with ``rows = n_kept`` and ``offset = L`` (see :meth:`from_kept`).
        """
        keys, values = cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :]
        return cls.from_kept(keys, values, kept, prompt_len=cache.offset)

    # ------------------------------------------------------------------ mlx-lm cache protocol
    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``(1, Hkv, S, D)`` new rows at logical positions ``offset .. offset+S-1``; return all valid rows."""
        new = keys.shape[2]
        if self.keys is None:
            raise RuntimeError(
                "CompactedKVCache is empty: build it with CompactedKVCache.from_kept(...) after prefill"
            )
        if self.rows + new > self.keys.shape[2]:
            grow = (new + self.step - 1) // self.step * self.step
            batch, heads, _, _ = self.keys.shape
            self.keys = mx.concatenate(
                [self.keys[..., : self.rows, :], mx.zeros((batch, heads, grow, self.keys.shape[3]), self.keys.dtype)],
                axis=2,
            )
            self.values = mx.concatenate(
                [
                    self.values[..., : self.rows, :],
                    mx.zeros((batch, heads, grow, self.values.shape[3]), self.values.dtype),
                ],
                axis=2,
            )
            self.positions = mx.concatenate([self.positions[:, : self.rows], mx.zeros((heads, grow), mx.int32)], axis=1)
        start, stop = self.rows, self.rows + new
        self.keys[..., start:stop, :] = keys
        self.values[..., start:stop, :] = values
        self.positions[:, start:stop] = mx.arange(self.offset, self.offset + new, dtype=mx.int32)[None, :]
        self.rows = stop
        self.offset += new
        return self.keys[..., :stop, :], self.values[..., :stop, :]

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None) -> Any:  # noqa: N803 - mlx-lm's name
        """The attention mask for ``N`` new tokens over ``rows + N`` physical rows.

        Every kept row is older than every new token, so the only masking needed is causal
        *inside* the new chunk: ``N == 1`` needs none; ``N > 1`` uses ``"causal"``, which MLX's
        attention aligns to the bottom-right corner (query ``i`` sees all rows up to ``rows + i``),
        and which therefore stays right for every layer even though layers keep different row counts
        (mlx-lm builds one mask for all layers from the first layer's cache).

        ``return_array=True`` (asked by some models) gives that mask as an array sized to *this*
        cache's rows; it is only right for other layers when they hold the same row count.
        """
        if window_size is not None:
            raise ValueError(
                "CompactedKVCache is for global-attention layers; sliding-window layers keep their RotatingKVCache"
            )
        if N == 1:
            return None
        if return_array:
            return create_causal_mask(N, self.rows)
        return "causal"

    def size(self) -> int:
        """Physical rows held (not the logical length: that is ``offset``)."""
        return self.rows

    def empty(self) -> bool:
        return self.keys is None

    def is_trimmable(self) -> bool:
        return False

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers (``2 * Hkv * capacity * D * itemsize``; capacity == rows right after compaction)."""
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    @property
    def valid_keys(self) -> mx.array:
        """``(1, Hkv, rows, D)`` the rows in use."""
        return self.keys[..., : self.rows, :]

    @property
    def valid_values(self) -> mx.array:
        """``(1, Hkv, rows, D)`` the value rows in use."""
        return self.values[..., : self.rows, :]

    @property
    def valid_positions(self) -> mx.array:
        """``(Hkv, rows)`` logical position of each held row."""
        return self.positions[:, : self.rows]

    # ------------------------------------------------------------------ (de)serialisation
    @property
    def state(self) -> tuple[Any, ...]:
        """``(keys, values, positions, offset)``; arrays trimmed to ``rows`` (what save_prompt_cache stores)."""
        if self.keys is None:
            return (None, None, None, self.offset)
        return (self.valid_keys, self.valid_values, self.valid_positions, self.offset)

    @state.setter
    def state(self, value: tuple[Any, ...]) -> None:
        self.keys, self.values, self.positions, offset = value
        self.offset = int(offset)
        self.rows = 0 if self.keys is None else int(self.keys.shape[2])
        if self.positions is not None:
            self.positions = self.positions.astype(mx.int32)

    @property
    def meta_state(self) -> str:
        """Nothing beyond ``state`` (the offset travels in ``state``); kept for mlx-lm versions that ask."""
        return ""

    @meta_state.setter
    def meta_state(self, value: str) -> None:
        if value:
            raise ValueError(f"CompactedKVCache has no meta state, got {value!r}")

    def __repr__(self) -> str:
        heads = 0 if self.keys is None else self.keys.shape[1]
        return f"CompactedKVCache(offset={self.offset}, rows={self.rows}, kv_heads={heads}, nbytes={self.nbytes})"


#: The former name of :class:`CompactedKVCache`, kept for existing code (and for prompt caches saved under it).
CompressedKVCache = CompactedKVCache


def register_with_mlx_lm() -> None:
    """Make ``mlx_lm.models.cache.load_prompt_cache`` able to rebuild :class:`CompactedKVCache`.

    mlx-lm resolves cache classes by name in its cache module's globals, so the only way to extend *its*
    loader is to add our class to that module (under its name and its former name ``CompressedKVCache``).
    This changes mlx-lm's module, which is why it never happens on import: call it once, or use
    :func:`load_prompt_cache` here, which calls it.
    """
    import mlx_lm.models.cache as mlx_cache

    mlx_cache.CompactedKVCache = CompactedKVCache
    mlx_cache.CompressedKVCache = CompactedKVCache


def load_prompt_cache(file_name: str, return_metadata: bool = False) -> Any:
    """mlx-lm's own ``load_prompt_cache`` after :func:`register_with_mlx_lm`: files with compacted layers load too."""
    from mlx_lm.models.cache import load_prompt_cache as mlx_load_prompt_cache

    register_with_mlx_lm()
    return mlx_load_prompt_cache(file_name, return_metadata=return_metadata)
