"""The attention wrapper that fits each layer's mask to its own (compacted) key count.

transformers builds one attention mask per forward and shares it across layers, but after compaction
layers hold different numbers of rows. So while a compacted cache is in use, the model's attention
implementation is switched (through the public ``model.set_attn_implementation``) to a thin wrapper,
``"refreekv_sdpa"`` or ``"refreekv_eager"``, registered with ``transformers.AttentionInterface``. It builds
each layer's mask from its own key count: every kept row is in the past, so the mask is the causal mask
aligned to the bottom-right corner (plus the sliding window on sliding layers). A full layer still holds
one row per token, so its mask is the ordinary causal one. :class:`FittedAttention` restores the original
implementation on exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import hf_adapter

#: Attention implementations the mask-fitting wrapper can delegate to.
SUPPORTED_ATTENTION = ("sdpa", "eager")
_WRAPPER_PREFIX = "refreekv_"


def bottom_right_mask(q_len: int, kv_len: int, sliding_window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each query may see when all cached rows are in the past: ``(q_len, kv_len)`` bool, or ``None`` = all.

    Query ``i`` is the token at row ``kv_len - q_len + i``; it sees rows ``j <= kv_len - q_len + i`` (causal, aligned to
    the bottom-right corner) and, on a sliding layer, only the last ``sliding_window`` of them.
    """
    if q_len == 1 and (sliding_window is None or kv_len <= sliding_window):
        return None
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    cols = torch.arange(kv_len, device=device)[None, :]
    allowed = cols <= rows
    if sliding_window is not None:
        allowed &= rows - cols < sliding_window
    return allowed


def _model_eager_attention(module: torch.nn.Module) -> Callable[..., Any]:
    # Each family has its own eager function (Gemma 3's adds logit soft-capping): use the module's own.
    return sys.modules[type(module).__module__].eager_attention_forward


def _make_fitted_attention(base: str) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        # *args: a wrapper around this one (kvpress patches every registered attention function) may pass
        # dropout positionally; it goes on to the base function unchanged.
        q_len, kv_len = query.shape[-2], key.shape[-2]
        allowed = bottom_right_mask(q_len, kv_len, kwargs.get("sliding_window"), query.device)
        if base == "sdpa":
            fn = ALL_ATTENTION_FUNCTIONS["sdpa"]
            if allowed is not None and q_len == kv_len and kwargs.get("sliding_window") is None:
                allowed = None  # plain causal prefill: let SDPA use is_causal, as transformers itself does
            mask = None if allowed is None else allowed[None, None]
        else:
            fn = _model_eager_attention(module)
            mask = None
            if allowed is not None:
                mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
                mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)[None, None]
        return fn(module, query, key, value, mask, *args, **kwargs)

    attention.__name__ = f"refreekv_{base}_attention"
    attention.__doc__ = f"{base} attention with a per-layer bottom-right causal mask (see refreekv_torch.hf_attention)."
    return attention


def fitted_attention_name(base: str) -> str:
    """Register (once, with ``AttentionInterface.register``) and return the name of the wrapper around ``base``."""
    name = _WRAPPER_PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_fitted_attention(base))
    return name


def base_attention(model: Any) -> str:
    """The model's attention implementation (``"sdpa"`` or ``"eager"``), or a ValueError naming the fix."""
    impl = hf_adapter.text_config(model)._attn_implementation or "eager"
    base = impl.removeprefix(_WRAPPER_PREFIX)
    if base not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"refreekv compression needs attn_implementation='sdpa' or 'eager' (got {impl!r}); "
            "load the model with attn_implementation='sdpa' or call model.set_attn_implementation('sdpa')"
        )
    return base


class FittedAttention:
    """Switch a model to the mask-fitting wrapper of its attention, and back.

    Args:
        model: a transformers model using ``sdpa`` or ``eager`` attention (checked here).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.base = base_attention(model)
        self._saved: str | None = None

    @property
    def active(self) -> bool:
        """True while the wrapper is in use."""
        return self._saved is not None

    def use(self) -> None:
        """Use the wrapper (idempotent); called once a layer holds fewer rows than tokens seen."""
        if self._saved is None:
            self._saved = hf_adapter.text_config(self.model)._attn_implementation
            self.model.set_attn_implementation(fitted_attention_name(self.base))

    def restore(self) -> None:
        """Put the model's own implementation back (idempotent)."""
        if self._saved is not None:
            self.model.set_attn_implementation(self._saved)
            self._saved = None
