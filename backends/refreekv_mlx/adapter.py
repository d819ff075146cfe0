"""Everything that differs between mlx-lm model families, in one place.

ReFreeKV needs, per layer, the attention module's query projection, its query norm (if any),
its RoPE, its head counts and its scale, and whether the layer is a sliding-window layer
(left alone: its ``RotatingKVCache`` already bounds its memory). mlx-lm's attention modules
disagree on the details:

* qwen2 and qwen3 have no ``head_dim`` attribute: we read it from ``q_proj``'s output size.
* qwen3 and gemma3 normalise queries per head (``q_norm``) *before* RoPE.
* gemma3's scale is ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``: always read ``attn.scale``.
* gemma3 (and llama configs with ``layer_types``) mix sliding-window and global layers: a layer is
  compressible exactly when the model makes a plain ``KVCache`` for it.
* mistral is served by mlx-lm's llama module.
* the output head is the tied embedding or ``lm_head`` (gemma3 decides at load time, the others in their
  config), and multimodal gemma3 wraps the text model in ``language_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from refreekv_edu.integration import LayerSpec

#: ``model_type`` values whose attention this adapter understands.
SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")


@dataclass(frozen=True)
class AttentionLayer(LayerSpec):
    """One mlx-lm attention layer: the shared :class:`~refreekv_edu.integration.LayerSpec` (``index``,
    ``num_heads``, ``num_kv_heads``, ``head_dim``, ``scale``, ``compressible``: False for sliding-window
    layers) plus the module that recomputes its queries.

    Attributes:
        attn: the mlx-lm attention module (``layer.self_attn``).
    """

    attn: nn.Module


def model_family(model: nn.Module) -> str:
    """The mlx-lm ``model_type`` of ``model``.

    Raises:
        ValueError: the family is not one the adapter supports (the message lists the supported ones).
    """
    family = getattr(model, "model_type", None) or getattr(getattr(model, "args", None), "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"model family {family!r} is not supported by the MLX ReFreeKV integration; "
            f"supported model_type values: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family


def _out_features(linear: nn.Module) -> int:
    # Linear and QuantizedLinear both store weight as (out_features, packed in_features).
    return int(linear.weight.shape[0])


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Describe every decoder layer's attention; sliding-window layers are marked not compressible."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    model_family(model)
    caches = make_prompt_cache(model)
    out = []
    for i, (block, cache) in enumerate(zip(model.layers, caches)):
        attn = block.self_attn
        hq, hkv = int(attn.n_heads), int(attn.n_kv_heads)  # mlx-lm's names for num_heads, num_kv_heads
        dim = int(getattr(attn, "head_dim", 0) or _out_features(attn.q_proj) // hq)
        # LayerSpec fields in order, then the module; compressible: the model makes a plain KVCache for it
        out.append(AttentionLayer(i, hq, hkv, dim, float(attn.scale), type(cache) is KVCache, attn))
    return out


def recompute_queries(layer: AttentionLayer, x: mx.array, first_position: int) -> mx.array:
    """Recompute the post-RoPE queries of the last ``r`` prompt positions from the attention input.

    ``r = policy.query_rows``: 1 for the paper's recency ranking (the last position only), ``w`` for an
    H2O/SnapKV ranking (its observation window).

    Args:
        layer: the layer's description.
        x: ``(1, r, hidden)`` the attention module's input for the last ``r`` prompt positions
            (after the layer's input norm, exactly what ``self_attn`` received).
        first_position: the logical position of ``x[:, 0]`` (``L - r``), the RoPE offset.

    Returns:
        ``(Hq, r, D)`` float32 queries, identical to the ones the model's attention used.
    """
    attn = layer.attn
    batch, rows, _ = x.shape
    queries = attn.q_proj(x).reshape(batch, rows, layer.num_heads, layer.head_dim)
    if hasattr(attn, "q_norm"):
        # RMSNorm over D: the same whether applied before or after the head transpose.
        queries = attn.q_norm(queries)
    queries = queries.transpose(0, 2, 1, 3)
    queries = attn.rope(queries, offset=first_position)
    return queries[0].astype(mx.float32)


def text_model(model: nn.Module) -> nn.Module:
    """The language model itself (multimodal gemma3 wraps it in ``language_model``)."""
    return model.language_model if model_family(model) == "gemma3" else model


def split_head(model: nn.Module) -> tuple[Callable[..., mx.array], Callable[[mx.array], mx.array]]:
    """``(backbone, head)`` with ``head(backbone(tokens, cache)) == model(tokens, cache=cache)``.

    ``backbone(tokens (1, N), cache)`` returns the final-normed hidden states ``(1, N, hidden)``;
    ``head`` maps them to logits. Prefill uses this to skip the vocabulary projection for every prompt
    position but the last (for a 135M model with a 49k vocabulary that projection is ~20% of the work).
    """
    family = model_family(model)
    text = text_model(model)
    if family in ("gemma3", "gemma3_text"):
        tied = bool(getattr(text, "tie_word_embeddings", False))
    else:
        tied = bool(text.args.tie_word_embeddings)
    backbone = text.model
    head = backbone.embed_tokens.as_linear if tied else text.lm_head
    return (lambda tokens, cache: backbone(tokens, cache)), head


def vocab_size(model: nn.Module) -> int:
    """Rows of the token embedding: ids must lie below (quantized embeddings keep the row count too)."""
    return int(text_model(model).model.embed_tokens.weight.shape[0])


def context_length(model: nn.Module) -> int | None:
    """``max_position_embeddings`` of the model's config, ``None`` when the config does not say."""
    length = getattr(getattr(text_model(model), "args", None), "max_position_embeddings", None)
    return int(length) if length else None
