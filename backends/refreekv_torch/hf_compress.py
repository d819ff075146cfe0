"""Compress a Hugging Face transformers KV cache with a ReFreeKV policy, for real.

How it works, in the order it happens:

1. **Capture** (during prefill). A forward pre-hook on every attention module keeps the
   last ``r = policy.query_rows`` rows of the layer's attention input and of its RoPE
   ``(cos, sin)``: one row for the paper's recency ranking, the window ``w`` for H2O/SnapKV.
   Layers the policy never prunes (``full_layers``) keep nothing. The model runs exactly as
   it would without us.
2. **Decide** (after prefill, once per layer). The last ``r`` queries are recomputed from the
   captured rows with the layer's own ``q_proj`` / ``q_norm`` / RoPE (:mod:`.hf_adapter`), the
   post-RoPE keys are read from the cache, and ``policy.decide_layer(Q (Hq, r, D), K (Hkv, L, D))``
   picks the rows each KV head keeps.
3. **Compact**. Each pruned layer's cached keys/values ``(1, Hkv, L, D)`` are cut down to
   ``(1, Hkv, n_kept, D)`` in a new :class:`PrunedLayer`; the old tensors are freed. When every
   KV head keeps the same positions (always with the recency ranking) that is one
   ``index_select`` on the row axis; otherwise a per-head gather. A full layer keeps its cache
   object and tensors untouched.
4. **Decode**. Two things must stay right although layers now hold fewer rows than tokens seen:

   - *positions*: the next token's RoPE position is the number of tokens seen (``L`` after the
     prompt), not the number of rows kept. :class:`PrunedLayer` counts both and reports the
     logical length from ``get_seq_length()``, which is what transformers uses for positions.
   - *masks*: transformers builds one attention mask per forward and shares it across layers, but
     layers now hold different numbers of rows. So while a compressed cache is in use the model's
     attention implementation is swapped for a thin wrapper (``"refreekv_sdpa"`` /
     ``"refreekv_eager"``) that builds each layer's own mask from its own key count: every kept row
     is in the past, so the mask is the causal mask aligned to the bottom-right corner (plus the
     sliding window on sliding layers). A full layer still holds one row per token, so its mask is
     the ordinary causal one. The original implementation is restored on exit.

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
    """The last ``r = policy.query_rows`` rows one attention layer saw in prefill (nothing for a full layer)."""

    hidden: torch.Tensor | None  # (1, r, hidden_size), attention input (after input_layernorm); None: full layer
    cos: torch.Tensor | None  # (1, r, D)
    sin: torch.Tensor | None  # (1, r, D)
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
        # The queries a decision reads: 1 row for recency, w for H2O/SnapKV. Never policy.window, which
        # is 0 for the paper, and x[:, -0:] would be the whole prompt.
        rows = max(1, int(self.policy.query_rows))
        prunes = self.policy.prunes_layer(info.index)

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if cache is None or hidden is None:
                return
            if info.index < len(cache.layers) and cache.layers[info.index].get_seq_length() > 0:
                return  # not a prefill for this layer: the cache already holds tokens
            self._cache = cache
            if not prunes:  # a full layer: only its length is needed, for the trace
                self._captured[info.index] = _Captured(None, None, None, prompt_len=int(hidden.shape[1]))
                return
            cos, sin = kwargs["position_embeddings"]
            self._captured[info.index] = _Captured(
                hidden=hidden[:, -rows:].detach(),
                cos=cos[:, -rows:].detach(),
                sin=sin[:, -rows:].detach(),
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
        compacted = False
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
            if captured.hidden is None:  # a full layer (Appendix B): the cache stays as it is
                decisions.append(self._full_layer_decision(info, keys))
                continue
            queries = hf_adapter.observation_queries(info, captured.hidden, (captured.cos, captured.sin))
            k32 = keys[0].float()
            if self.backend.name == "numpy":
                queries, k32 = queries.cpu().numpy(), k32.cpu().numpy()
            decision = self.policy.decide_layer(queries, k32, scale=info.scale, backend=self.backend, layer=info.index)
            decisions.append(decision)
            cache.layers[info.index] = _compacted(layer, decision)
            compacted = True
        self._captured.clear()
        # Layers now hold different row counts: each needs its own mask. Without a compacted layer (every
        # layer full or sliding, e.g. Mistral with sliding_window set) the model's own masks stay right.
        if compacted:
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

    def _full_layer_decision(self, info: hf_adapter.AttentionLayerInfo, keys: torch.Tensor) -> LayerDecision:
        """The policy's decision for a full layer (everything kept), without reading the layer's tensors.

        ``decide_layer`` returns at once for a layer in ``full_layers``, before any attention is computed;
        it only reads the shapes (``Hq``, ``Hkv``, ``L``). So it gets one-dimensional stand-ins instead of
        the real queries and keys: no float32 copy and no scan of a large cache for a layer left whole.
        """
        _, num_kv_heads, length, _ = keys.shape
        rows = min(max(1, int(self.policy.query_rows)), length)
        stand_in_q = np.zeros((info.num_heads, rows, 1), np.float32)
        stand_in_k = np.zeros((num_kv_heads, length, 1), np.float32)
        decision = self.policy.decide_layer(stand_in_q, stand_in_k, backend="numpy", layer=info.index)
        assert decision.full_layer, "a layer the policy does not prune must get a full-layer decision"
        return decision

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


def shared_positions(kept: np.ndarray) -> np.ndarray | None:
    """The kept positions ``(n_kept,)`` when every head keeps the same ones (always with recency), else ``None``."""
    kept = np.asarray(kept)
    return kept[0] if bool((kept == kept[:1]).all()) else None


def select_rows(tensor: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``: the same rows for every head, one ``index_select`` on the row axis."""
    index = torch.as_tensor(positions, dtype=torch.long, device=tensor.device)
    return tensor.index_select(2, index)


def gather_rows(tensor: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
    """``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``: head ``h`` keeps rows ``kept[h]`` (one gather, per-head indices)."""
    batch, num_kv_heads, _, head_dim = tensor.shape
    index = torch.as_tensor(kept, dtype=torch.long, device=tensor.device)[None, :, :, None]
    return tensor.gather(2, index.expand(batch, num_kv_heads, kept.shape[1], head_dim))


def _compacted(layer: Any, decision: LayerDecision) -> PrunedLayer:
    """Keep the decided rows of one layer: ``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)``; every head keeps the same count."""
    keys, values = layer.keys, layer.values
    batch, num_kv_heads, length, head_dim = keys.shape
    kept = np.asarray(decision.kept)
    if kept.shape[0] != num_kv_heads:
        raise ValueError(f"decision has {kept.shape[0]} kept sets but the cache has {num_kv_heads} KV heads")
    positions = shared_positions(kept)
    if positions is not None:  # one kept set for all heads: a plain row selection, no per-head index tensor
        new_keys, new_values = select_rows(keys, positions), select_rows(values, positions)
    else:
        new_keys, new_values = gather_rows(keys, kept), gather_rows(values, kept)
    assert new_keys.shape == (batch, num_kv_heads, kept.shape[1], head_dim), new_keys.shape
    assert new_values.shape == new_keys.shape
    return PrunedLayer(new_keys.contiguous(), new_values.contiguous(), logical_length=length)


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
