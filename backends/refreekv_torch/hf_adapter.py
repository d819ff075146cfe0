"""Where Hugging Face model families differ, in one place.

ReFreeKV needs three things from each attention layer of a transformers model:

1. the **post-RoPE queries** of the last ``r = policy.query_rows`` prompt positions (1 for the
   paper's recency ranking, the window ``w`` for H2O/SnapKV), recomputed from the layer's input
   (the model never stores queries);
2. the **attention scale** the model really uses (Gemma 3 does not use ``1/sqrt(D)``);
3. whether the layer is **compressible**: not a sliding-window layer, whose rotating cache we leave alone.

Everything else (the cache layout ``(batch, Hkv, L, D)``, post-RoPE keys in the cache,
``rotate_half`` RoPE) is the same across the supported families:

=============  ============================================  ===========================
model_type     query path                                    scale
=============  ============================================  ===========================
llama          q_proj -> RoPE                                ``attn.scaling`` (1/sqrt D)
mistral        q_proj -> RoPE                                ``attn.scaling``
qwen2          q_proj (with bias) -> RoPE                    ``attn.scaling``
qwen3          q_proj -> q_norm (per head) -> RoPE           ``attn.scaling``
gemma3_text    q_proj -> q_norm (per head) -> RoPE           ``query_pre_attn_scalar**-0.5``
=============  ============================================  ===========================

Adding a family means adding a row to :data:`QUERY_NORM` (and checking the table above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from refreekv_edu.integration import LayerSpec

#: model_type -> whether the query goes through a per-head ``q_norm`` before RoPE.
QUERY_NORM: dict[str, bool] = {
    "llama": False,
    "mistral": False,
    "qwen2": False,
    "qwen3": True,
    "gemma3_text": True,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(QUERY_NORM)


class UnsupportedModelError(ValueError):
    """The model's family is not one the adapter knows how to read queries from."""


@dataclass(frozen=True)
class AttentionLayer(LayerSpec):
    """One transformers attention layer: the shared :class:`~refreekv_edu.integration.LayerSpec` (``index``,
    ``num_heads``, ``num_kv_heads``, ``head_dim``, ``scale``, ``compressible``) plus what recomputing its queries needs.

    Attributes:
        attn: the ``self_attn`` module (holds ``q_proj``, ``q_norm``, ``scaling``).
        sliding_window: the window of a sliding-window layer (then ``compressible`` is False), ``None`` otherwise.
        q_norm: the per-head query norm applied before RoPE (qwen3, gemma3), else ``None``.
    """

    attn: torch.nn.Module
    sliding_window: int | None
    q_norm: torch.nn.Module | None


def text_config(model: Any) -> Any:
    """The decoder config (the model config itself for text-only models)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def model_type(model: Any) -> str:
    """The decoder config's ``model_type`` (e.g. ``"llama"``, ``"qwen3"``), else the model's class name."""
    return str(getattr(text_config(model), "model_type", type(model).__name__))


def check_supported(model: Any) -> str:
    """Return the model_type, or raise :class:`UnsupportedModelError` listing the supported families."""
    kind = model_type(model)
    if kind not in QUERY_NORM:
        raise UnsupportedModelError(
            f"model_type {kind!r} is not supported by the refreekv transformers adapter; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. Add a row to refreekv_torch/hf_adapter.py:QUERY_NORM "
            "after checking how that family computes its queries."
        )
    return kind


def cache_kwarg(model: Any) -> str:
    """The keyword the model's ``forward`` takes its KV cache under: ``"cache"`` (transformers >= 5.3) or
    ``"past_key_values"`` (5.0-5.2, where an unknown ``cache=`` lands in ``**kwargs`` and is ignored).

    Read from the signature, not from the version number: a model class that is not on the new name yet
    still gets the old one.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise UnsupportedModelError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; cannot pass it a KV cache"
    )


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The decoder layers, in order (``model.model.layers`` for every supported family)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedModelError(
            f"cannot find decoder layers on {type(model).__name__} (expected model.model.layers)"
        )
    return list(layers)


def attention_layers(model: Any) -> list[AttentionLayer]:
    """One :class:`AttentionLayer` per decoder layer."""
    kind = check_supported(model)
    config = text_config(model)
    num_heads = int(config.num_attention_heads)
    num_kv_heads = int(getattr(config, "num_key_value_heads", None) or num_heads)
    infos = []
    for index, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        head_dim = int(getattr(attn, "head_dim", None) or config.hidden_size // num_heads)
        window = _sliding_window(attn, config, index, kind)
        infos.append(
            AttentionLayer(
                index=index,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                scale=float(attn.scaling),
                compressible=window is None,
                attn=attn,
                sliding_window=window,
                q_norm=attn.q_norm if QUERY_NORM[kind] else None,
            )
        )
    return infos


def _sliding_window(attn: torch.nn.Module, config: Any, index: int, kind: str) -> int | None:
    # qwen2/qwen3/gemma3 set attn.sliding_window (None on full layers); mistral reads the config for
    # every layer; layer_types (when present) is the authority.
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(config.sliding_window) if layer_types[index] == "sliding_attention" else None
    window = getattr(attn, "sliding_window", None)
    if window is None and kind == "mistral":
        window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis: the RoPE convention of every supported family."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def recompute_queries(
    info: AttentionLayer,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Recompute the post-RoPE queries of the last ``r`` prompt positions, exactly as the layer did in prefill.

    Args:
        info: the layer.
        hidden: ``(1, r, hidden_size)``, the attention input (after ``input_layernorm``) of the last ``r``
            prompt positions (``r = policy.query_rows``).
        position_embeddings: ``(cos, sin)``, each ``(1, r, D)``, for the same positions.

    Returns:
        ``(Hq, r, D)`` float32 post-RoPE queries.
    """
    attn = info.attn
    batch, rows, _ = hidden.shape
    q = attn.q_proj(hidden).view(batch, rows, info.num_heads, info.head_dim)
    if info.q_norm is not None:
        q = info.q_norm(q)  # per-head RMSNorm over D, before RoPE
    q = q.transpose(1, 2)  # (1, Hq, r, D)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # (1, 1, r, D)
    q = q * cos + rotate_half(q) * sin
    return q[0].float()
