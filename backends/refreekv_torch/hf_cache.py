"""The compacted cache layer for transformers: fewer rows than tokens seen.

After ReFreeKV evicts prompt rows, a layer holds ``n_kept < L`` rows per KV head, but the next token's RoPE
position is still ``L``. :class:`CompactedKVCache` (a ``DynamicLayer``) counts both: ``num_rows`` (physical)
and ``logical_length`` (tokens seen), and reports the logical length from ``get_seq_length()``, which is
what transformers derives positions from. Its ``get_mask_sizes`` aligns the causal mask to the bottom-right
corner (every kept row is in the past). Decoded tokens are appended and never evicted.

The MLX integration's compacted cache has the same name (``refreekv_mlx.cache.CompactedKVCache``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer, StaticCache, StaticLayer

from refreekv_edu.integration import shared_positions


class CompactedKVCache(DynamicLayer):
    """A full-attention cache layer that holds fewer rows than the tokens it has seen.

    Attributes:
        keys, values: ``(1, Hkv, rows, D)``: the kept prompt rows (in position order), then every decoded token.
        logical_length: tokens seen so far (prompt length ``L`` + decoded tokens); the next token's position.
        prompt_rows: rows that came from the compacted prompt (``n_kept``).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, logical_length: int) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.logical_length = int(logical_length)
        self.prompt_rows = int(keys.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.logical_length += int(key_states.shape[-2])
        return super().update(key_states, value_states)

    def get_seq_length(self) -> int:
        """Tokens seen, not rows held: transformers derives the next positions from this."""
        return self.logical_length

    @property
    def num_rows(self) -> int:
        """Rows physically held per head."""
        return int(self.keys.shape[-2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # kv_offset shifts the rows' indices so that the new tokens line up with their logical positions
        # and every kept row sits before them: the bottom-right-aligned causal mask.
        return self.num_rows + query_length, self.logical_length - self.num_rows

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a compacted (ReFreeKV) cache layer cannot be cropped; run prefill again instead")

    def reset(self) -> None:
        super().reset()
        self.logical_length = 0
        self.prompt_rows = 0


def layer_bytes(layer: Any) -> int:
    """Bytes held by one cache layer's keys and values (0 when empty)."""
    if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
        return 0
    return layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()


def layer_rows(layer: Any) -> int:
    """Rows per head physically held by one cache layer."""
    if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
        return 0
    return int(layer.keys.shape[-2])


def check_dynamic(cache: Any) -> None:
    """Refuse a static cache (pre-allocated to ``max_cache_len`` rows): its rows cannot be compacted.

    Raises:
        ValueError: "static caches are not supported", with what to use instead.
    """
    if isinstance(cache, StaticCache) or any(isinstance(layer, StaticLayer) for layer in getattr(cache, "layers", ())):
        raise ValueError(
            "static caches are not supported by refreekv compression (a StaticCache pre-allocates max_cache_len rows "
            "per layer, so rows cannot be dropped); use the default DynamicCache (no cache_implementation='static')"
        )


def select_rows(tensor: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``: the same rows for every head, one ``index_select`` on the row axis."""
    index = torch.as_tensor(positions, dtype=torch.long, device=tensor.device)
    return tensor.index_select(2, index)


def gather_rows(tensor: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
    """``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``: head ``h`` keeps rows ``kept[h]`` (one gather, per-head indices)."""
    batch, num_kv_heads, _, head_dim = tensor.shape
    index = torch.as_tensor(kept, dtype=torch.long, device=tensor.device)[None, :, :, None]
    return tensor.gather(2, index.expand(batch, num_kv_heads, kept.shape[1], head_dim))


def compact_layer(layer: Any, kept: np.ndarray) -> CompactedKVCache:
    """Keep the decided rows of one layer: ``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``, logical length still ``L``.

    Args:
        layer: a ``DynamicLayer`` holding exactly the prompt.
        kept: ``(Hkv, n_kept)`` kept positions per KV head, ascending, the same count per head.
    """
    keys, values = layer.keys, layer.values
    batch, num_kv_heads, length, head_dim = keys.shape
    kept = np.asarray(kept)
    if kept.shape[0] != num_kv_heads:
        raise ValueError(f"decision has {kept.shape[0]} kept sets but the cache has {num_kv_heads} KV heads")
    positions = shared_positions(kept)
    if positions is not None:  # one kept set for all heads: a plain row selection, no per-head index tensor
        new_keys, new_values = select_rows(keys, positions), select_rows(values, positions)
    else:
        new_keys, new_values = gather_rows(keys, kept), gather_rows(values, kept)
    assert new_keys.shape == (batch, num_kv_heads, kept.shape[1], head_dim), new_keys.shape
    return CompactedKVCache(new_keys.contiguous(), new_values.contiguous(), logical_length=length)
