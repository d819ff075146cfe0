"""Our own chunked prefill: full KV caches plus what ReFreeKV needs to decide.

Why not ``mlx_lm.generate_step``? It prefills all prompt tokens but the last, then feeds the
last one as if it were a decode step. ReFreeKV must decide *after* the whole prompt is cached and
*before* any query attends to a compressed cache, so we prefill the whole prompt ourselves, keep
the last prompt position's logits (they predict the first new token, computed with the full cache),
and only then decide and compact.

To decide, each layer needs the post-RoPE queries of the last ``w`` prompt positions. mlx-lm
attention modules do not return their queries, so during prefill we record the tail of each
attention module's *input* (the last ``w`` rows) and recompute the queries afterwards from it with
the module's own ``q_proj`` / ``q_norm`` / ``rope`` (:func:`refreekv_mlx.adapter.window_queries`).
Recording works by wrapping ``layer.self_attn`` in a tiny module for the duration of the prefill
call and putting the original back afterwards (also on error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .adapter import AttentionLayer, attention_layers, split_head, window_queries


class _InputRecorder(nn.Module):
    """Forwards to an attention module and remembers the last ``window`` rows of its input ``x``."""

    def __init__(self, inner: nn.Module, window: int) -> None:
        super().__init__()
        self.inner = inner
        self.window = window
        self.tail: mx.array | None = None  # (1, <=w, hidden)

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        # A chunk may be shorter than the window: keep a rolling tail across chunks.
        joined = x if self.tail is None else mx.concatenate([self.tail, x], axis=1)
        self.tail = joined[:, -self.window :, :]
        return self.inner(x, *args, **kwargs)


@dataclass
class PrefillResult:
    """What :func:`prefill` returns.

    Attributes:
        cache: mlx-lm caches, one per layer, holding the whole prompt (``KVCache`` / ``RotatingKVCache``).
        last_logits: ``(vocab,)`` float32 logits at the last prompt position (predict the first new token).
        window_inputs: layer index -> ``(1, w, hidden)`` attention input of the last ``w`` prompt positions
            (compressible layers only).
        layers: the adapter's description of every layer.
        prompt_len: ``L``.
        window: ``w = min(window, L)``.
    """

    cache: list[Any]
    last_logits: mx.array
    window_inputs: dict[int, mx.array]
    layers: list[AttentionLayer]
    prompt_len: int
    window: int
    extra: dict[str, Any] = field(default_factory=dict)

    def queries(self, layer: int) -> mx.array:
        """``(Hq, w, D)`` float32 post-RoPE observation-window queries of ``layer``."""
        return window_queries(self.layers[layer], self.window_inputs[layer], self.prompt_len - self.window)

    def keys(self, layer: int) -> mx.array:
        """``(Hkv, L, D)`` post-RoPE prompt keys of ``layer`` (float32, from its cache)."""
        cache = self.cache[layer]
        return cache.keys[0, :, : self.prompt_len, :].astype(mx.float32)


def prefill(
    model: nn.Module, tokens: list[int] | mx.array, window: int, chunk_size: int = 512, progress: bool = False
) -> PrefillResult:
    """Run the prompt through ``model`` in chunks with full caches, recording the observation window.

    Args:
        model: an mlx-lm model of a supported family.
        tokens: ``(L,)`` prompt token ids, ``L >= 1``.
        window: ``w``, how many trailing positions' queries the policy observes.
        chunk_size: tokens per forward call (bounds the ``chunk x L`` attention scores in memory).
        progress: show a tqdm bar over the chunks.

    Returns:
        a :class:`PrefillResult`.
    """
    from mlx_lm.models.cache import make_prompt_cache

    if not isinstance(tokens, mx.array):
        tokens = mx.array(np.asarray(tokens).astype(np.int32))  # accepts lists of numpy integers too
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of ids, got shape {tuple(tokens.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    length = int(tokens.size)
    window = min(int(window), length)
    layers = attention_layers(model)
    backbone, head = split_head(model)
    cache = make_prompt_cache(model)
    recorders = {a.index: _InputRecorder(a.attn, window) for a in layers if a.compressible}
    blocks = model.layers
    try:
        for index, recorder in recorders.items():
            blocks[index].self_attn = recorder
        hidden = None
        starts = range(0, length, chunk_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"prefill {length} tokens", unit="chunk", leave=False)
        for start in starts:
            chunk = tokens[start : start + chunk_size]
            hidden = backbone(chunk[None], cache)
            mx.eval(hidden, [c.state for c in cache], [r.tail for r in recorders.values()])
        # Only the last position's logits are needed (they pick the first new token).
        last_logits = head(hidden[:, -1:, :])[0, -1].astype(mx.float32)
    finally:
        for index, recorder in recorders.items():
            blocks[index].self_attn = recorder.inner
    return PrefillResult(
        cache=cache,
        last_logits=last_logits,
        window_inputs={i: r.tail for i, r in recorders.items()},
        layers=layers,
        prompt_len=length,
        window=window,
    )
