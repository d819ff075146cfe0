"""The press: compress a Hugging Face transformers KV cache with a ReFreeKV policy, for real.

How it works, in the order it happens (the shared steps are :mod:`refreekv_edu.integration`'s):

1. **Capture** (during prefill). A forward pre-hook on every pruned layer's attention module keeps the last
   ``r = policy.query_rows`` rows of the layer's attention input and of its RoPE ``(cos, sin)``: one row for
   the paper's recency ranking, the window ``w`` for H2O/SnapKV. The model runs exactly as it would without us.
2. **Decide** (after prefill, once per layer, :func:`~refreekv_edu.integration.decide_and_compact`). The last
   ``r`` queries are recomputed from the captured rows with the layer's own ``q_proj`` / ``q_norm`` / RoPE
   (:mod:`.hf_adapter`), the post-RoPE keys are read from the cache, and ``policy.decide_layer`` picks the rows
   each KV head keeps. A layer in ``policy.full_layers`` is decided from shapes alone and left untouched.
3. **Compact**. Each pruned layer's cache becomes a :class:`~.hf_cache.CompactedKVCache` holding the kept rows
   (:mod:`.hf_cache`), and the model's attention switches to the mask-fitting wrapper (:mod:`.hf_attention`).
4. **Decode** as usual; positions continue at ``L``.

Sliding-window layers keep their rotating cache. ``gqa="expand"`` cannot compact a GQA layer and raises.
Batch size 1 without padding, dynamic caches only; one press per model at a time.

Usage::

    with refreekv_torch.compress(model, rk.ReFreeKV()) as press:
        out = model.generate(**inputs, max_new_tokens=64)
    press.trace.budgets          # per-layer budgets decided at the end of prefill
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from refreekv_edu.backend import Backend
from refreekv_edu.decision import LayerDecision, Trace
from refreekv_edu.integration import ModelAdapter, check_compactable, decide_and_compact, trace_meta

from . import hf_adapter, hf_cache
from .hf_attention import FittedAttention
from .hf_cache import CompactedKVCache, check_dynamic, layer_bytes, layer_rows

__all__ = ["Compressor", "CompressionStats", "TransformersAdapter", "compress", "apply", "CompactedKVCache"]

#: The former name of :class:`~.hf_cache.CompactedKVCache`, kept for existing code.
PrunedLayer = CompactedKVCache


@dataclass
class Captured:
    """The last ``r = policy.query_rows`` rows one pruned attention layer saw in prefill."""

    hidden: torch.Tensor  # (1, r, hidden_size), attention input (after input_layernorm)
    cos: torch.Tensor  # (1, r, D)
    sin: torch.Tensor  # (1, r, D)


# ---------------------------------------------------------------------------------------- the adapter
class TransformersAdapter(ModelAdapter):
    """The transformers pieces of :func:`refreekv_edu.integration.generate` (see :class:`ModelAdapter`).

    Attributes:
        model: the causal LM (batch 1).
        cache: the ``DynamicCache`` of the current prompt (set by :meth:`prefill` or by the capture hooks).
        captured: layer index -> :class:`Captured`, for the pruned layers of the last prefill.
        prompt_len: ``L`` of the last prefill.
        pending: a prefill was captured and not compacted yet.
        attention: switches the model to the mask-fitting attention once a layer is compacted.
    """

    name = "torch"

    def __init__(self, model: Any, policy: Any) -> None:
        super().__init__(policy)
        self.model = model
        self.attention_layers = hf_adapter.attention_layers(model)  # raises for unsupported families
        self.attention = FittedAttention(model)  # raises for attention implementations other than sdpa / eager
        self.cache_kwarg = hf_adapter.cache_kwarg(model)  # "cache" (transformers >= 5.3) or "past_key_values"
        self.cache: Any = None
        self.captured: dict[int, Captured] = {}
        self.prompt_len = 0
        self.pending = False
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ the model
    def layers(self) -> list[hf_adapter.AttentionLayer]:
        return self.attention_layers

    @property
    def device(self) -> torch.device:
        """Where the model's weights (and so its cache) live."""
        return next(self.model.parameters()).device

    def vocab_size(self) -> int | None:
        embeddings = self.model.get_input_embeddings()
        rows = getattr(embeddings, "num_embeddings", None)
        return int(rows) if rows is not None else getattr(hf_adapter.text_config(self.model), "vocab_size", None)

    def context_length(self) -> int | None:
        length = getattr(hf_adapter.text_config(self.model), "max_position_embeddings", None)
        return int(length) if length else None

    def eos_sources(self) -> tuple[Any, ...]:
        return (getattr(self.model, "generation_config", None),)

    def describe(self) -> dict[str, str]:
        config = hf_adapter.text_config(self.model)
        return {"model": getattr(config, "_name_or_path", "") or "", "model_type": hf_adapter.model_type(self.model)}

    def decision_backend(self, requested: str | Backend | None = None) -> Backend:
        backend = super().decision_backend(requested)
        # Helper arrays the core builds from numpy must sit next to the model's tensors: pin the device.
        # Through the protocol's next_to (not TorchBackend itself): backend.py imports this module's caller
        # (generation.py) lazily, so importing backend.py here would close an import cycle.
        return backend.next_to(torch.empty(0, device=self.device))

    # ------------------------------------------------------------------ capture
    def attach_capture(self) -> None:
        """Install the capture hooks on every pruned layer (idempotent)."""
        if self._handles or not self.policy.compresses:
            return
        for layer in self.attention_layers:
            if layer.compressible:
                hook = self._capture_hook(layer, prunes=self.policy.prunes_layer(layer.index))
                self._handles.append(layer.attn.register_forward_pre_hook(hook, with_kwargs=True))

    def detach_capture(self) -> None:
        """Remove the capture hooks and forget what they captured."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.captured.clear()
        self.pending = False

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Capture during the block, unless the hooks are already installed (by a :class:`Compressor`)."""
        installed = bool(self._handles)
        self.attach_capture()
        try:
            yield
        finally:
            if not installed:
                for handle in self._handles:
                    handle.remove()
                self._handles.clear()

    def _capture_hook(self, layer: hf_adapter.AttentionLayer, prunes: bool) -> Callable[..., None]:
        # The queries a decision reads: 1 row for recency, w for H2O/SnapKV. Never policy.window, which
        # is 0 for the paper, and x[:, -0:] would be the whole prompt.
        rows = max(1, int(self.policy.query_rows))

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if cache is None or hidden is None:
                return
            check_dynamic(cache)
            if layer.index < len(cache.layers) and cache.layers[layer.index].get_seq_length() > 0:
                return  # not a prefill for this layer: the cache already holds tokens
            self.cache, self.prompt_len, self.pending = cache, int(hidden.shape[1]), True
            if prunes:  # a full layer records nothing: its decision needs only the shapes
                cos, sin = kwargs["position_embeddings"]
                self.captured[layer.index] = Captured(
                    hidden[:, -rows:].detach(), cos[:, -rows:].detach(), sin[:, -rows:].detach()
                )

        return hook

    # ------------------------------------------------------------------ the four framework pieces
    def prefill(self, ids: list[int], progress: bool = False) -> np.ndarray:
        from transformers import DynamicCache

        given = self.cache = DynamicCache(config=self.model.config)
        with self.capturing():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: given})
        if self.cache is not given:  # the hooks saw a cache the model made itself: ours was ignored
            raise RuntimeError(
                f"the model ignored the KV cache passed as `{self.cache_kwarg}=` and built its own, so decoding "
                "would not see the compacted cache; this transformers version takes the cache under another keyword"
            )
        self.prompt_len = len(ids)
        self.check_captured()
        return self.to_numpy(out.logits[0, -1])

    def check_captured(self) -> None:
        """After a prefill: every pruned layer's hook saw it and its cache holds the whole prompt.

        This is what stops a transformers version (or a caller) from silently leaving the cache unpruned: a cache
        passed under a keyword the model does not know stays empty, and a forward that bypasses the hooks
        captures nothing.

        Raises:
            RuntimeError: naming the first layer that was not captured or holds the wrong number of rows.
        """
        if not self.policy.compresses:
            return
        pruned = [layer for layer in self.attention_layers if layer.compressible and self.policy.prunes_layer(layer.index)]
        if not pruned:  # e.g. a sliding-window-only model: every layer stays whole, nothing to check
            return
        if self.cache is None or not self.pending:
            raise RuntimeError(
                "the prefill ran but no attention layer saw a KV cache, so nothing can be compressed; the model "
                f"takes its cache as `{self.cache_kwarg}=` (check the installed transformers version)"
            )
        for layer in pruned:
            if layer.index not in self.captured:
                raise RuntimeError(f"layer {layer.index} captured no queries in the prefill; nothing would be pruned")
            rows = layer_rows(self.cache.layers[layer.index]) if layer.index < len(self.cache.layers) else 0
            if rows != self.prompt_len:
                raise RuntimeError(
                    f"layer {layer.index}: the cache holds {rows} rows after a {self.prompt_len}-token prefill "
                    "(an empty cache means the model did not write into the cache it was given)"
                )

    def decision_inputs(self, layer: hf_adapter.AttentionLayer) -> tuple[torch.Tensor, torch.Tensor]:
        captured = self.captured.get(layer.index)
        if captured is None:
            raise RuntimeError(f"layer {layer.index} recorded no queries: run the prefill inside the compressor first")
        keys = self.cache.layers[layer.index].keys  # (1, Hkv, L, D), post-RoPE keys
        if keys.shape[-2] != self.prompt_len:
            raise RuntimeError(
                f"layer {layer.index}: cache holds {keys.shape[-2]} rows but prefill saw {self.prompt_len} tokens; "
                "compaction must happen right after a single prefill forward on an empty cache"
            )
        queries = hf_adapter.recompute_queries(layer, captured.hidden, (captured.cos, captured.sin))
        return queries, keys[0].float()

    def compact(self, layer: hf_adapter.AttentionLayer, decision: LayerDecision) -> None:
        self.cache.layers[layer.index] = hf_cache.compact_layer(self.cache.layers[layer.index], decision.kept)
        self.attention.use()  # layers now hold different row counts: each needs its own mask

    def forward(self, token: int) -> np.ndarray:
        input_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, use_cache=True, **{self.cache_kwarg: self.cache})
        return self.to_numpy(out.logits[0, -1])

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def layer_rows(self, layer: hf_adapter.AttentionLayer) -> int:
        return layer_rows(self.cache.layers[layer.index])

    def layer_bytes(self, layer: hf_adapter.AttentionLayer) -> int:
        return layer_bytes(self.cache.layers[layer.index])


# ---------------------------------------------------------------------------------------- the press
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


class Compressor:
    """Attach a policy to a transformers model: capture in prefill, then decide and compact the cache.

    Args:
        model: a supported causal LM (see :data:`hf_adapter.SUPPORTED_MODEL_TYPES`), ``sdpa`` or ``eager`` attention.
        policy: a refreekv_edu policy (``ReFreeKV``, ``FixedBudget``, ``FullCache``).
        backend: the decision backend (``"torch"``, ``"numpy"``, a Backend); default: torch if available.
        auto: compact right after each prefill forward (for ``model.generate``). ``False`` leaves it to
            :meth:`compact`.

    Attributes:
        adapter: the :class:`TransformersAdapter` (what was captured, the cache, the attention switch).
        trace: the :class:`~refreekv_edu.decision.Trace` of the last compaction.
        stats: the :class:`CompressionStats` of the last compaction.
    """

    def __init__(self, model: Any, policy: Any, backend: str | Backend | None = None, auto: bool = True) -> None:
        self.model = model
        self.policy = policy
        self.auto = auto
        self.adapter = TransformersAdapter(model, policy)
        self.layers = self.adapter.layers()
        check_compactable(policy, self.layers)
        self.backend = self.adapter.decision_backend(backend)
        self.trace = Trace(meta=trace_meta(self.adapter, policy, self.backend, self.layers))
        self.stats = CompressionStats()
        self._handles: list[Any] = []

    # -------------------------------------------------------------- hooks
    def attach(self) -> Compressor:
        """Install the capture hooks (and, with ``auto``, the compaction hook). Idempotent.

        Raises:
            ValueError: another compressor is attached to the same model (nested ``compress()``).
        """
        if self._handles or not self.policy.compresses:
            return self
        for hook in self.model._forward_pre_hooks.values():
            other = getattr(hook, "__self__", None)
            if isinstance(other, Compressor) and other is not self:
                raise ValueError(
                    "nested compress(): this model already has a refreekv compressor attached (with policy "
                    f"{other.policy!r}); leave that `with compress(...)` block (or call .detach()) first"
                )
        self.adapter.attach_capture()
        self._handles.append(self.model.register_forward_pre_hook(self._check_inputs, with_kwargs=True))
        if self.auto:
            self._handles.append(self.model.register_forward_hook(self._after_forward))
        return self

    def detach(self) -> None:
        """Remove the hooks and restore the model's attention implementation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.adapter.detach_capture()
        self.adapter.attention.restore()

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
        check_dynamic(kwargs.get("cache", kwargs.get("past_key_values")))

    def _after_forward(self, module: Any, args: tuple, output: Any) -> None:
        if self.adapter.pending and self.adapter.cache is not None:
            self.compact(self.adapter.cache)

    # -------------------------------------------------------------- decide + compact
    @torch.no_grad()
    def compact(self, cache: Any = None) -> Trace:
        """Decide every layer of a freshly prefilled ``cache`` and replace each pruned layer's rows by the kept ones.

        Returns:
            The :class:`Trace` (also kept in ``self.trace``); ``self.stats`` is updated.
        """
        adapter = self.adapter
        cache = cache if cache is not None else adapter.cache
        if cache is not None:
            check_dynamic(cache)
        if cache is None or (not adapter.pending and any(layer.compressible for layer in self.layers)):
            raise RuntimeError("nothing to compact: run the prefill forward inside the compressor first")
        adapter.cache = cache
        if not adapter.prompt_len:
            adapter.prompt_len = cache.get_seq_length()
        compaction = decide_and_compact(adapter, self.policy, self.layers, adapter.prompt_len, self.backend)
        adapter.captured.clear()
        adapter.pending = False
        self.stats = CompressionStats(**compaction.stats(adapter.prompt_len))
        meta = trace_meta(adapter, self.policy, self.backend, self.layers) | {"prompt_tokens": adapter.prompt_len}
        self.trace = Trace(layers=compaction.decisions, meta=meta)
        return self.trace


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
