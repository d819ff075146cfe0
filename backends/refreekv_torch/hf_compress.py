"""Compress a Hugging Face transformers KV cache with a ReFreeKV policy, for real.

How it works, in the order it happens:

1. **Capture** (during prefill). A forward pre-hook on every attention module keeps the
   last ``w`` rows of the layer's attention input and of its RoPE ``(cos, sin)``. Nothing
   else is stored; the model runs exactly as it would without us.
2. **Decide** (after prefill, once per layer). The observation-window queries are recomputed
   from the captured rows with the layer's own ``q_proj`` / ``q_norm`` / RoPE
   (:mod:`.hf_adapter`), the post-RoPE keys are read from the cache, and
   ``policy.decide_layer(Q (Hq, w, D), K (Hkv, L, D))`` picks the rows each KV head keeps.
3. **Compact**. Each layer's cached keys/values ``(1, Hkv, L, D)`` are gathered down to
   ``(1, Hkv, n_kept, D)`` in a new :class:`PrunedLayer`; the old tensors are freed.
4. **Decode**. Two things must stay right although layers now hold fewer rows than tokens seen:

   - *positions*: the next token's RoPE position is the number of tokens seen (``L`` after the
     prompt), not the number of rows kept. :class:`PrunedLayer` counts both and reports the
     logical length from ``get_seq_length()``, which is what transformers uses for positions.
   - *masks*: transformers builds one attention mask per forward and shares it across layers, but
     layers now hold different numbers of rows. So while a compressed cache is in use the model's
     attention implementation is swapped for a thin wrapper (``"refreekv_sdpa"`` /
     ``"refreekv_eager"``) that builds each layer's own mask from its own key count: every kept row
     is in the past, so the mask is the causal mask aligned to the bottom-right corner (plus the
     sliding window on sliding layers). The original implementation is restored on exit.

Gemma 3 sliding-window layers (and any layer with a sliding window) keep their rotating cache
untouched. ``gqa="expand"`` cannot compact a GQA model (it would need ``Hq`` copies of each KV
head); it raises, and works only when ``Hq == Hkv``. Batch size 1 only, without padding.

Usage::

    with refreekv_torch.compress(model, rk.ReFreeKV()) as press:
        out = model.generate(**inputs, max_new_tokens=64)
    press.trace.budgets          # per-layer budgets decided at the end of prefill
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from refreekv_edu.backend import Backend, get_backend
from refreekv_edu.decision import LayerDecision, Trace

from . import hf_adapter

#: Attention implementations the mask-fitting wrapper can delegate to.
SUPPORTED_ATTENTION = ("sdpa", "eager")
_WRAPPER_PREFIX = "refreekv_"


# ---------------------------------------------------------------------------------------- the cache
class PrunedLayer(DynamicLayer):
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


# ---------------------------------------------------------------------------------------- the masks
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
    def attention(module, query, key, value, attention_mask, **kwargs):
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
        return fn(module, query, key, value, mask, **kwargs)

    attention.__name__ = f"refreekv_{base}_attention"
    attention.__doc__ = f"{base} attention with a per-layer bottom-right causal mask (see refreekv_torch.hf_compress)."
    return attention


def fitted_attention_name(base: str) -> str:
    """Register (once) and return the name of the mask-fitting wrapper around ``base`` (``"sdpa"`` or ``"eager"``)."""
    name = _WRAPPER_PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, _make_fitted_attention(base))
    return name


def _base_attention(model: Any) -> str:
    impl = hf_adapter.text_config(model)._attn_implementation or "eager"
    base = impl.removeprefix(_WRAPPER_PREFIX)
    if base not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {impl!r} is not supported for compressed caches; load the model with "
            f"attn_implementation='sdpa' (or 'eager'), or call model.set_attn_implementation('sdpa')"
        )
    return base


# ---------------------------------------------------------------------------------------- the press
@dataclass
class _Captured:
    """The last ``w`` rows one attention layer saw in prefill."""

    hidden: torch.Tensor  # (1, w, hidden_size), attention input (after input_layernorm)
    cos: torch.Tensor  # (1, w, D)
    sin: torch.Tensor  # (1, w, D)
    prompt_len: int


@dataclass
class CompressionStats:
    """What one compaction did (fills ``GenerationResult.stats``)."""

    prompt_tokens: int = 0
    kept_per_layer: list[int] = field(default_factory=list)
    kv_bytes_full: int = 0
    kv_bytes_kept: int = 0
    decide_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The five fields as a plain dict (``kept_per_layer`` copied), the form ``GenerationResult.stats`` takes."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "kept_per_layer": list(self.kept_per_layer),
            "kv_bytes_full": self.kv_bytes_full,
            "kv_bytes_kept": self.kv_bytes_kept,
            "decide_s": self.decide_s,
        }


def decision_backend(name: str | Backend | None = None) -> Backend:
    """The backend decisions run on: ``name`` if given, else torch when its backend imports, else numpy."""
    if name is not None:
        return get_backend(name)
    try:
        return get_backend("torch")
    except Exception:  # noqa: BLE001 - the torch backend (helper package) may be missing; numpy always works
        return get_backend("numpy")


class Compressor:
    """Attach a policy to a transformers model: capture in prefill, then decide and compact the cache.

    Args:
        model: a supported causal LM (see :data:`hf_adapter.SUPPORTED_MODEL_TYPES`), ``sdpa`` or ``eager`` attention.
        policy: a refreekv_edu policy (``ReFreeKV``, ``FixedBudget``, ``FullCache``).
        backend: the decision backend (``"torch"``, ``"numpy"``, a Backend); default: torch if available.
        auto: compact right after each prefill forward (for ``model.generate``). ``False`` leaves it to
            :meth:`compact`, which :func:`refreekv_torch.generation.generate` calls so it can time each phase.

    Attributes:
        trace: the :class:`~refreekv_edu.decision.Trace` of the last compaction.
        stats: the :class:`CompressionStats` of the last compaction.
    """

    def __init__(self, model: Any, policy: Any, backend: str | Backend | None = None, auto: bool = True) -> None:
        self.model = model
        self.policy = policy
        self.layers = hf_adapter.attention_layers(model)
        self.base_attention = _base_attention(model)
        self.backend = decision_backend(backend)
        self.auto = auto
        first = self.layers[0]
        if policy.gqa == "expand" and first.num_heads != first.num_kv_heads:
            raise ValueError(
                f"gqa='expand' keeps one set of rows per *query* head ({first.num_heads}), but this model caches "
                f"{first.num_kv_heads} KV heads (GQA), so its cache cannot be compacted that way (the official code "
                "repeats the cache to Hq heads first, which saves no memory). Use gqa='group' to compress the cache, "
                "or call policy.decide_layer directly to study expand-mode decisions."
            )
        self.trace = Trace(meta=self._meta())
        self.stats = CompressionStats()
        self._captured: dict[int, _Captured] = {}
        self._cache: Cache | None = None
        self._handles: list[Any] = []
        self._saved_attention: str | None = None

    # -------------------------------------------------------------- hooks
    def attach(self) -> Compressor:
        """Install the capture hooks (and, with ``auto``, the compaction hook). Idempotent."""
        if self._handles or not self.policy.compresses:
            return self
        for info in self.layers:
            if info.is_sliding:
                continue
            handle = info.attn.register_forward_pre_hook(self._capture_hook(info), with_kwargs=True)
            self._handles.append(handle)
        self._handles.append(self.model.register_forward_pre_hook(self._check_inputs, with_kwargs=True))
        if self.auto:
            self._handles.append(self.model.register_forward_hook(self._after_forward))
        return self

    def detach(self) -> None:
        """Remove the hooks and restore the model's attention implementation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()
        if self._saved_attention is not None:
            self.model.config._attn_implementation = self._saved_attention
            self._saved_attention = None

    def __enter__(self) -> Compressor:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _check_inputs(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch = (ids if ids is not None else embeds).shape[0] if (ids is not None or embeds is not None) else 1
        if batch != 1:
            raise ValueError(f"refreekv compresses one sequence at a time (batch 1); got batch size {batch}")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and not bool(mask.all()):
            raise ValueError("refreekv does not support padded inputs; pass the prompt without padding (batch 1)")

    def _capture_hook(self, info: hf_adapter.AttentionLayerInfo) -> Callable[..., None]:
        window = self.policy.window

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if cache is None or hidden is None:
                return
            if info.index < len(cache.layers) and cache.layers[info.index].get_seq_length() > 0:
                return  # not a prefill for this layer: the cache already holds tokens
            cos, sin = kwargs["position_embeddings"]
            self._cache = cache
            self._captured[info.index] = _Captured(
                hidden=hidden[:, -window:].detach(),
                cos=cos[:, -window:].detach(),
                sin=sin[:, -window:].detach(),
                prompt_len=int(hidden.shape[1]),
            )

        return hook

    def _after_forward(self, module: Any, args: tuple, output: Any) -> None:
        if self._captured and self._cache is not None:
            self.compact(self._cache)

    # -------------------------------------------------------------- decide + compact
    @torch.no_grad()
    def compact(self, cache: Cache | None = None) -> Trace:
        """Decide every captured layer and replace its cache rows by the kept ones.

        Returns:
            The :class:`Trace` (also kept in ``self.trace``); ``self.stats`` is updated.
        """
        cache = cache if cache is not None else self._cache
        every_layer_slides = all(info.is_sliding for info in self.layers)
        if cache is None or (not self._captured and not every_layer_slides):
            raise RuntimeError("nothing to compact: run the prefill forward inside the compressor first")
        start = time.perf_counter()
        decisions: list[LayerDecision] = []
        full_bytes = 0
        prompt_len = 0
        for info in self.layers:
            layer = cache.layers[info.index]
            captured = self._captured.pop(info.index, None)
            if captured is None:  # a sliding layer (left alone) or a layer not run
                full_bytes += layer_bytes(layer)
                continue
            prompt_len = captured.prompt_len
            keys = layer.keys  # (1, Hkv, L, D), post-RoPE keys
            if keys.shape[-2] != captured.prompt_len:
                raise RuntimeError(
                    f"layer {info.index}: cache holds {keys.shape[-2]} rows but prefill saw {captured.prompt_len} tokens; "
                    "compaction must happen right after a single prefill forward on an empty cache"
                )
            full_bytes += layer_bytes(layer)
            queries = hf_adapter.observation_queries(info, captured.hidden, (captured.cos, captured.sin))
            k32 = keys[0].float()
            if self.backend.name == "numpy":
                queries, k32 = queries.cpu().numpy(), k32.cpu().numpy()
            decision = self.policy.decide_layer(queries, k32, scale=info.scale, backend=self.backend, layer=info.index)
            cache.layers[info.index] = _compacted(layer, decision)
            decisions.append(decision)
        self._captured.clear()
        if decisions:  # a model whose every layer slides (e.g. Mistral with sliding_window set) keeps its cache
            self._use_fitted_attention()
        self.stats = CompressionStats(
            prompt_tokens=prompt_len,
            kept_per_layer=[layer_rows(layer) for layer in cache.layers],
            kv_bytes_full=full_bytes,
            kv_bytes_kept=sum(layer_bytes(layer) for layer in cache.layers),
            decide_s=time.perf_counter() - start,
        )
        self.trace = Trace(layers=decisions, meta=self._meta())
        return self.trace

    def _use_fitted_attention(self) -> None:
        config = self.model.config
        if self._saved_attention is None:
            self._saved_attention = config._attn_implementation
        config._attn_implementation = fitted_attention_name(self.base_attention)

    def _meta(self) -> dict[str, Any]:
        config = hf_adapter.text_config(self.model)
        return {
            "model_type": hf_adapter.model_type(self.model),
            "model": getattr(config, "_name_or_path", "") or "",
            "policy": repr(self.policy),
            "backend": self.backend.name,
            "num_layers": len(self.layers),
            "sliding_layers": [info.index for info in self.layers if info.is_sliding],
        }


def _compacted(layer: Any, decision: LayerDecision) -> PrunedLayer:
    """Gather the kept rows of one layer: ``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``; every head keeps the same count."""
    keys, values = layer.keys, layer.values
    batch, num_kv_heads, length, head_dim = keys.shape
    kept = np.asarray(decision.kept)
    if kept.shape[0] != num_kv_heads:
        raise ValueError(f"decision has {kept.shape[0]} kept sets but the cache has {num_kv_heads} KV heads")
    index = torch.as_tensor(kept, dtype=torch.long, device=keys.device)[None, :, :, None]
    index = index.expand(batch, num_kv_heads, kept.shape[1], head_dim)
    new_keys = keys.gather(2, index).contiguous()
    new_values = values.gather(2, index).contiguous()
    assert new_keys.shape == (batch, num_kv_heads, kept.shape[1], head_dim), new_keys.shape
    assert new_values.shape == new_keys.shape
    return PrunedLayer(new_keys, new_values, logical_length=length)


def compress(model: Any, policy: Any, backend: str | Backend | None = None) -> Compressor:
    """Context manager: while active, every prefill on an empty cache is followed by a ReFreeKV compaction.

    Example::

        with compress(model, rk.ReFreeKV(threshold=0.05)) as press:
            out = model.generate(**tok("...", return_tensors="pt"), max_new_tokens=32, do_sample=False)
        print(press.trace.budgets, press.stats.kv_bytes_kept / press.stats.kv_bytes_full)
    """
    return Compressor(model, policy, backend=backend, auto=True)


def apply(model: Any, policy: Any, backend: str | Backend | None = None) -> Compressor:
    """Like :func:`compress` without ``with``: returns an attached :class:`Compressor`; call ``.detach()`` to undo."""
    return Compressor(model, policy, backend=backend, auto=True).attach()
