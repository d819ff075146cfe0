"""``generate()`` for mlx-lm models: the core skeleton with the mlx-lm pieces.

:func:`refreekv_edu.generate` lands here for an mlx-lm model. The loop itself (encode, check, prefill,
decide, compact, decode, stats) is :func:`refreekv_edu.integration.generate`; this module supplies
:class:`MLXAdapter`, the mlx-lm pieces:

1. **prefill** the whole prompt with full caches (:func:`refreekv_mlx.prefill.prefill`), recording the
   last ``policy.query_rows`` attention inputs of every pruned layer; mlx-lm's ``generate_step`` would feed
   the last prompt token as a decode step, so the prefill is ours;
2. **decision inputs**: queries recomputed from those inputs (:func:`refreekv_mlx.adapter.recompute_queries`),
   keys read from the cache;
3. **compact**: a layer's ``KVCache`` becomes a :class:`~refreekv_mlx.cache.CompactedKVCache` holding only the
   kept rows (one ``take`` when every KV head keeps the same positions, as with the recency ranking);
4. **forward** one decode token through the caches; RoPE positions continue from ``L``.

No query ever attends to a cache pruned during its own forward call: pruning happens strictly between
the prefill call and the first decode call. :func:`compress_prompt` and :func:`decode` expose steps 1-3
and step 4 separately, for your own loops (or mlx-lm's ``generate_step(prompt_cache=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from refreekv_edu import integration
from refreekv_edu.decision import LayerDecision
from refreekv_edu.generate import GenerationResult
from refreekv_edu.integration import ModelAdapter, Sampler, encode_prompt

from . import adapter as mlx_adapter
from .cache import CompactedKVCache
from .prefill import PrefillResult, prefill

__all__ = ["MLXAdapter", "CompressedPrompt", "compress_prompt", "decode", "generate", "encode_prompt"]


def _rows(cache: Any) -> int:
    """Rows per KV head in use: ``offset`` for a ``KVCache``, at most its buffer for a rotating one."""
    if isinstance(cache, CompactedKVCache):
        return cache.rows
    if cache.keys is None:
        return 0
    return min(cache.offset, cache.keys.shape[2]) if hasattr(cache, "max_size") else cache.offset


def _bytes(cache: Any) -> int:
    """Bytes of the keys and values in use (exact rows, no buffer slack)."""
    if cache.keys is None:
        return 0
    per_row = cache.keys.nbytes // cache.keys.shape[2] + cache.values.nbytes // cache.values.shape[2]
    return int(per_row * _rows(cache))


def _step(model: nn.Module, cache: list[Any], token: int) -> np.ndarray:
    """One decode forward through ``cache``: the ``(vocab,)`` float32 logits."""
    return np.array(model(mx.array([[token]]), cache=cache)[0, -1].astype(mx.float32))


class MLXAdapter(ModelAdapter):
    """The mlx-lm pieces of :func:`refreekv_edu.integration.generate` (see :class:`ModelAdapter`).

    Args:
        model: an mlx-lm model of a supported family (raises ``ValueError`` otherwise).
        policy: the policy the prefill records queries for.
        chunk_size: prefill tokens per forward call.

    Attributes:
        cache: one mlx-lm cache per layer after :meth:`prefill` (compacted layers become ``CompactedKVCache``).
        prefilled: the :class:`~refreekv_mlx.prefill.PrefillResult` of the last prefill.
    """

    name = "mlx"

    def __init__(self, model: nn.Module, policy: Any, chunk_size: int = 512) -> None:
        super().__init__(policy)
        self.model = model
        self.chunk_size = chunk_size
        self.attention_layers = mlx_adapter.attention_layers(model)
        self.cache: list[Any] = []
        self.prefilled: PrefillResult | None = None

    def layers(self) -> list[mlx_adapter.AttentionLayer]:
        return self.attention_layers

    def vocab_size(self) -> int | None:
        return mlx_adapter.vocab_size(self.model)

    def context_length(self) -> int | None:
        return mlx_adapter.context_length(self.model)

    def describe(self) -> dict[str, str]:
        return {"model": str(getattr(self.model, "name_or_path", "") or ""), "model_type": mlx_adapter.model_family(self.model)}

    def prefill(self, ids: list[int], progress: bool = False) -> np.ndarray:
        policy = self.policy
        record = [a.index for a in self.attention_layers if a.compressible and policy.prunes_layer(a.index)]
        self.prefilled = prefill(
            self.model, ids, query_rows=max(1, int(policy.query_rows)), chunk_size=self.chunk_size,
            progress=progress, record=record if policy.compresses else [],
        )  # fmt: skip
        self.cache = list(self.prefilled.cache)
        return np.array(self.prefilled.last_logits)

    def decision_inputs(self, layer: mlx_adapter.AttentionLayer) -> tuple[mx.array, mx.array]:
        return self.prefilled.queries(layer.index), self.prefilled.keys(layer.index)

    def compact(self, layer: mlx_adapter.AttentionLayer, decision: LayerDecision) -> None:
        self.cache[layer.index] = CompactedKVCache.from_kv_cache(self.cache[layer.index], decision.kept)

    def forward(self, token: int) -> np.ndarray:
        return _step(self.model, self.cache, token)

    def to_numpy(self, x: mx.array) -> np.ndarray:
        return np.array(x.astype(mx.float32))

    def layer_rows(self, layer: mlx_adapter.AttentionLayer) -> int:
        return _rows(self.cache[layer.index])

    def layer_bytes(self, layer: mlx_adapter.AttentionLayer) -> int:
        return _bytes(self.cache[layer.index])


@dataclass
class CompressedPrompt:
    """A prompt after prefill + decide + compact, ready to decode.

    Attributes:
        cache: one mlx-lm cache per layer: ``CompactedKVCache`` for compacted layers, the model's own
            cache otherwise (sliding-window layers, the policy's ``full_layers``, or every layer under
            ``FullCache``).
        decisions: one decision per compressible (global-attention) layer, in layer order, full layers
            included (``full_layer=True``, budget 1.0), so that ``Trace.mean_budget`` counts them at 100%.
        last_logits: ``(vocab,)`` float32 logits at the last prompt position (full cache).
        prompt_len: ``L``.
        kv_bytes_full: bytes the prompt's K and V take uncompressed, all layers.
        kv_bytes_kept: bytes held right after compaction.
        kept_per_layer: rows per KV head of every layer after compaction, by layer index (``L`` for a full layer).
        prefill_s, decide_s: seconds.
        meta: ``{"decide_backend": name}``.
    """

    cache: list[Any]
    decisions: list[LayerDecision]
    last_logits: mx.array
    prompt_len: int
    kv_bytes_full: int
    kv_bytes_kept: int
    kept_per_layer: list[int]
    prefill_s: float
    decide_s: float
    meta: dict[str, Any] = field(default_factory=dict)


def compress_prompt(
    model: nn.Module,
    tokens: list[int] | mx.array,
    policy: Any,
    *,
    chunk_size: int = 512,
    backend: Any = None,
    progress: bool = False,
) -> CompressedPrompt:
    """Prefill ``tokens``, decide every compressible layer with ``policy`` and compact its cache.

    Args:
        model: an mlx-lm model of a supported family.
        tokens: ``(L,)`` prompt token ids (a list or a 1-D ``mx.array``), ``L >= 1``.
        policy: a refreekv_edu policy; one that does not compress (``FullCache``) leaves every cache as is.
        chunk_size: prefill tokens per forward call.
        backend: backend for the decisions, a name or instance (``None`` / ``"auto"``: MLX if it imports, else numpy).
        progress: show a tqdm bar over the prefill chunks.

    Raises:
        ValueError: ids outside the vocabulary or a prompt longer than the context (before any forward pass);
            ``gqa="expand"`` on a GQA model; an unsupported family.
    """
    ids = encode_prompt(None, tokens)
    mlx = MLXAdapter(model, policy, chunk_size=chunk_size)
    done = integration.prefill_and_compact(mlx, ids, backend=backend, progress=progress)
    compaction = done.compaction
    return CompressedPrompt(
        cache=mlx.cache,
        decisions=compaction.decisions,
        last_logits=mlx.prefilled.last_logits,
        prompt_len=len(ids),
        kv_bytes_full=compaction.kv_bytes_full,
        kv_bytes_kept=compaction.kv_bytes_kept,
        kept_per_layer=compaction.kept_per_layer,
        prefill_s=done.prefill_s,
        decide_s=compaction.decide_s,
        meta={"decide_backend": done.backend.name},
    )


def decode(
    model: nn.Module,
    cache: list[Any],
    last_logits: mx.array | np.ndarray,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: set[int] | None = None,
    progress: bool = False,
) -> tuple[list[int], np.ndarray]:
    """Sample up to ``max_new_tokens`` tokens through ``cache`` (see :func:`refreekv_edu.integration.decode`).

    Returns:
        ``(tokens, first_logits)``: generated ids and the ``(vocab,)`` float32 logits of the first decode step
        (``last_logits`` when there is none).
    """
    return integration.decode(
        lambda token: _step(model, cache, token), np.array(last_logits, dtype=np.float32),
        Sampler(temperature, top_p, seed), max_new_tokens, eos_ids or (), progress,
    )  # fmt: skip


def generate(
    model: nn.Module, tokenizer: Any, prompt: Any, policy: Any, max_new_tokens: int = 64, *, chunk_size: int = 512,
    **options: Any,
) -> GenerationResult:  # fmt: skip
    """Generate from ``prompt`` with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: an mlx-lm model (llama, mistral, qwen2, qwen3, gemma3) and its tokenizer.
        prompt: string (chat template applied), chat messages, or token ids.
        policy: ``ReFreeKV(...)``, ``FixedBudget(...)`` or ``FullCache()``.
        max_new_tokens: tokens to generate (fewer when an EOS token comes first and ``stop_at_eos``).
        chunk_size: prefill chunk length.
        **options: ``temperature``, ``top_p``, ``seed``, ``chat_template``, ``stop_at_eos``, ``progress`` and
            ``backend`` (the decision backend; default MLX if it imports, else numpy), as
            :func:`refreekv_edu.integration.generate` takes them (greedy by default).
    """
    return integration.generate(MLXAdapter(model, policy, chunk_size=chunk_size), tokenizer, prompt, max_new_tokens, **options)
