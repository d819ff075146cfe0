"""Our own chunked prefill: full KV caches plus what ReFreeKV needs to decide.

Why not ``mlx_lm.generate_step``? It prefills all prompt tokens but the last, then feeds the
last one as if it were a decode step. ReFreeKV must decide *after* the whole prompt is cached and
*before* any query attends to a compressed cache, so we prefill the whole prompt ourselves, keep
the last prompt position's logits (they predict the first new token, computed with the full cache),
and only then decide and compact.

To decide, each layer needs the post-RoPE queries of the last ``r = policy.query_rows`` prompt
positions: one row for the paper's recency ranking, the ``w`` window rows for an H2O/SnapKV ranking
(never ``policy.window``, which is 0 for the paper). mlx-lm attention modules do not return their
queries, so during prefill we record the tail of each attention module's *input* (the last ``r``
rows) and recompute the queries afterwards from it with the module's own ``q_proj`` / ``q_norm`` /
``rope`` (:func:`refreekv_mlx.adapter.recompute_queries`).
Recording works by wrapping ``layer.self_attn`` in a tiny module for the duration of the prefill
call and putting the original back afterwards (also on error).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .adapter import AttentionLayer, attention_layers, recompute_queries, split_head


class _InputRecorder(nn.Module):
    """Forwards to an attention module and remembers the last ``rows`` rows of its input ``x``."""

    def __init__(self, inner: nn.Module, rows: int) -> None:
        super().__init__()
        if rows < 1:  # x[:, -0:] would be the WHOLE sequence, not none of it
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.inner = inner
        self.rows = rows
        self.tail: mx.array | None = None  # (1, <=r, hidden)

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        # A chunk may be shorter than r: keep a rolling tail across chunks.
        joined = x if self.tail is None else mx.concatenate([self.tail, x], axis=1)
        self.tail = joined[:, joined.shape[1] - min(self.rows, joined.shape[1]) :, :]
        return self.inner(x, *args, **kwargs)


@dataclass
class PrefillResult:
    """What :func:`prefill` returns.

    Attributes:
        cache: mlx-lm caches, one per layer, holding the whole prompt (``KVCache`` / ``RotatingKVCache``).
        last_logits: ``(vocab,)`` float32 logits at the last prompt position (predict the first new token).
        query_inputs: layer index -> ``(1, r, hidden)`` attention input of the last ``r`` prompt positions
            (the recorded layers only).
        layers: the adapter's description of every layer.
        prompt_len: ``L``.
        query_rows: ``r = min(query_rows, L)``, how many trailing positions' queries were recorded.
    """

    cache: list[Any]
    last_logits: mx.array
    query_inputs: dict[int, mx.array]
    layers: list[AttentionLayer]
    prompt_len: int
    query_rows: int

    def queries(self, layer: int) -> mx.array:
        """``(Hq, r, D)`` float32 post-RoPE queries of the last ``r`` prompt positions of ``layer``."""
        if layer not in self.query_inputs:
            raise KeyError(f"layer {layer} was not recorded (sliding-window and full layers are never pruned)")
        return recompute_queries(self.layers[layer], self.query_inputs[layer], self.prompt_len - self.query_rows)

    def keys(self, layer: int) -> mx.array:
        """``(Hkv, L, D)`` post-RoPE prompt keys of ``layer`` (float32, from its cache)."""
        cache = self.cache[layer]
        return cache.keys[0, :, : self.prompt_len, :].astype(mx.float32)


def prefill(
    model: nn.Module,
    tokens: list[int] | mx.array,
    query_rows: int,
    chunk_size: int = 512,
    progress: bool = False,
    record: Collection[int] | None = None,
) -> PrefillResult:
    """Run the prompt through ``model`` in chunks with full caches, recording the last ``query_rows`` rows.

    Args:
        model: an mlx-lm model of a supported family.
        tokens: ``(L,)`` prompt token ids, ``L >= 1``.
        query_rows: ``r >= 1``, how many trailing positions' queries the policy reads (``policy.query_rows``:
            1 for the paper, ``w`` for an H2O/SnapKV ranking; not ``policy.window``, which may be 0).
        chunk_size: tokens per forward call (bounds the ``chunk x L`` attention scores in memory).
        progress: show a tqdm bar over the chunks.
        record: the layers whose query inputs to record (default: every compressible layer); the others run as is.

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
    if isinstance(query_rows, bool) or not isinstance(query_rows, int | np.integer) or query_rows < 1:
        raise ValueError(f"query_rows must be an int >= 1 (policy.query_rows), got {query_rows!r}")
    length = int(tokens.size)
    rows = min(int(query_rows), length)
    layers = attention_layers(model)
    backbone, head = split_head(model)
    cache = make_prompt_cache(model)
    wanted = {a.index for a in layers if a.compressible} if record is None else set(record)
    recorders = {a.index: _InputRecorder(a.attn, rows) for a in layers if a.index in wanted}
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
        query_inputs={i: r.tail for i, r in recorders.items()},
        layers=layers,
        prompt_len=length,
        query_rows=rows,
    )
