"""One generation skeleton for every model library: prefill -> decide -> compact -> decode.

``rk.generate(model, tokenizer, prompt, policy)`` on a transformers (torch) or an mlx-lm (MLX) model runs
:func:`generate` below. Everything that is the same for every framework lives here, written once:

1. **encode** the prompt (a string through the chat template, chat messages, or token ids) and refuse,
   before any forward pass, ids outside the vocabulary and prompts longer than the model's context;
2. **prefill** the whole prompt into a full cache (the framework's forward; the last prompt position's
   logits pick the first new token, computed with the full cache);
3. **decide** every layer: layers the policy keeps whole get :meth:`Policy.full_layer_decision` (their keys
   are never read), the others ``policy.decide_layer(queries (Hq, r, D), keys (Hkv, L, D))`` with
   ``r = policy.query_rows`` recomputed queries;
4. **compact** each decided layer's cache to its kept rows (the framework's cache class, ``CompactedKVCache``
   in both integrations);
5. **decode** token by token through the compacted cache with a :class:`Sampler` (greedy at temperature 0,
   else seeded sampling), stopping at an end-of-sequence id;
6. fill one ``stats`` dict (:data:`refreekv_edu.generate.STATS_KEYS`) and one ``Trace.meta`` (:data:`TRACE_META_KEYS`).

A framework supplies only what is framework-specific, as a :class:`ModelAdapter`: a :class:`LayerSpec` per
layer, the prefill, the recomputed queries and the keys of a layer, the compaction of one layer, one decode
forward, and the conversion to numpy. ``tests/test_integration.py`` runs this skeleton on a numpy toy model
to show that a third backend needs nothing more.

Step 1 (encoding and the input checks) is in :mod:`refreekv_edu.encoding`, step 5 (:class:`Sampler` and
:func:`decode`) in :mod:`refreekv_edu.sampling`; both are re-exported here.

The core imports numpy and the standard library only; arrays of the framework pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend, BackendConfigError, get_backend
from .decision import LayerDecision, Trace
from .encoding import check_token_ids, display_tokens, encode_prompt, eos_ids
from .generate import GenerationResult, check_max_new_tokens
from .sampling import Sampler, decode

# Steps 1 and 5 live in their own modules and are re-exported here, so ``refreekv_edu.integration.X`` keeps working.
__all__ = [
    "TRACE_META_KEYS", "CompactedPrompt", "Compaction", "LayerSpec", "ModelAdapter", "Sampler", "check_compactable",
    "check_token_ids", "decide_and_compact", "decision_backend", "decode", "display_tokens", "encode_prompt",
    "eos_ids", "generate", "prefill_and_compact", "shared_positions", "trace_meta",
]

Array = Any

#: Keys of ``GenerationResult.trace.meta``, the same on every backend.
TRACE_META_KEYS = (
    "backend",  # str, the model's backend ("torch", "mlx", ...)
    "decide_backend",  # str, the backend the decisions ran on
    "model",  # str, the model's name or path ("" when unknown)
    "model_type",  # str, the model family ("llama", "qwen3", ...)
    "policy",  # str, repr(policy)
    "num_layers",  # int
    "sliding_layers",  # list[int], layers left alone (sliding-window caches)
    "prompt_tokens",  # int, L
    "temperature",  # float
    "seed",  # int
)


# ----------------------------------------------------------------------------------- the layer spec
@dataclass(frozen=True)
class LayerSpec:
    """What the algorithm needs to know about one attention layer, in every framework.

    Attributes:
        index: the layer's index in the model (and in its cache).
        num_heads: ``Hq``, query heads.
        num_kv_heads: ``Hkv``, key/value heads (``Hq = G * Hkv``).
        head_dim: ``D``.
        scale: the scale the model multiplies ``q k^T`` by (``1/sqrt(D)`` for most, not for Gemma 3).
        compressible: ``False`` for a sliding-window layer, whose rotating cache is left alone.
    """

    index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    compressible: bool


class ModelAdapter:
    """The framework-specific pieces of :func:`generate`; one instance per model and policy.

    Subclasses implement the methods that raise ``NotImplementedError``. Arrays are the framework's own
    (``torch.Tensor``, ``mx.array``); :meth:`prefill` and :meth:`forward` return numpy logits.

    Attributes:
        name: the registry name of the backend whose arrays this framework produces (``"torch"``, ``"mlx"``);
            decisions run there by default.
        policy: the policy whose decisions the prefill prepares for (which layers record queries, how many rows).
    """

    name: str = "base"

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    # ------------------------------------------------------------------ the model
    def layers(self) -> list[LayerSpec]:
        """One :class:`LayerSpec` per decoder layer, in order."""
        raise NotImplementedError

    def vocab_size(self) -> int | None:
        """Rows of the token embedding (ids must be below it); ``None`` when unknown."""
        return None

    def context_length(self) -> int | None:
        """The longest sequence the model was built for (``max_position_embeddings``); ``None`` when unknown."""
        return None

    def eos_sources(self) -> tuple[Any, ...]:
        """Objects whose ``eos_token_id`` / ``eos_token_ids`` end generation besides the tokenizer's (a generation config)."""
        return ()

    def describe(self) -> dict[str, str]:
        """``{"model": name or path, "model_type": family}`` for ``Trace.meta``."""
        return {"model": "", "model_type": ""}

    # ------------------------------------------------------------------ the four framework pieces
    def prefill(self, ids: list[int], progress: bool = False) -> np.ndarray:
        """Run the whole prompt into an empty cache, recording the last ``policy.query_rows`` attention inputs of
        every layer the policy prunes. Returns the ``(vocab,)`` float32 logits of the last prompt position."""
        raise NotImplementedError

    def decision_inputs(self, layer: LayerSpec) -> tuple[Array, Array]:
        """``(queries (Hq, r, D), keys (Hkv, L, D))`` of a pruned layer after :meth:`prefill`: post-RoPE, float32."""
        raise NotImplementedError

    def compact(self, layer: LayerSpec, decision: LayerDecision) -> None:
        """Replace the layer's cache by one holding only ``decision.kept`` rows ``(Hkv, n_kept)`` of each KV head,
        with the logical length (the next RoPE position) still ``L``."""
        raise NotImplementedError

    def forward(self, token: int) -> np.ndarray:
        """Feed one token through the (compacted) cache; return its ``(vocab,)`` float32 logits."""
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:
        """A framework array as a float32 numpy array of the same shape (for the numpy decision backend)."""
        return np.asarray(x)

    def layer_rows(self, layer: LayerSpec) -> int:
        """Rows per KV head the layer's cache holds now."""
        raise NotImplementedError

    def layer_bytes(self, layer: LayerSpec) -> int:
        """Bytes of the keys and values the layer's cache holds now (rows in use only, no buffer slack)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def decision_backend(self, requested: str | Backend | None = None) -> Backend:
        """The backend decisions run on: ``requested`` (a name or an instance), else this framework's own backend
        when it imports, else the numpy reference. ``"auto"`` means the framework's own."""
        return decision_backend(requested, default=self.name)


def decision_backend(requested: str | Backend | None, default: str) -> Backend:
    """``requested`` if given (``"auto"``/``None``: ``default``), falling back to numpy when ``default`` is not installed.

    A backend that is installed but misconfigured (:class:`BackendConfigError`) raises instead of falling back.
    """
    if requested not in (None, "auto"):
        return get_backend(requested)
    try:
        return get_backend(default)
    except BackendConfigError:
        raise
    except Exception:  # noqa: BLE001 - the framework's backend is missing here: the reference always works
        return get_backend("numpy")


def check_compactable(policy: Any, layers: Iterable[LayerSpec]) -> None:
    """Refuse ``gqa="expand"`` where a pruned layer is GQA: its kept sets are per query head, the cache per KV head."""
    if not policy.compresses or policy.gqa != "expand":
        return
    for layer in layers:
        if layer.compressible and policy.prunes_layer(layer.index) and layer.num_heads != layer.num_kv_heads:
            raise ValueError(
                f"gqa='expand' keeps one set of rows per query head ({layer.num_heads}), but this GQA model caches "
                f"{layer.num_kv_heads} KV heads, so its cache cannot be compacted that way (the official code repeats "
                "the cache to Hq heads first, which saves no memory). Use gqa='group' to compress the cache, or call "
                "policy.decide_layer() directly to study expand-mode decisions."
            )


def shared_positions(kept: np.ndarray) -> np.ndarray | None:
    """The kept positions ``(n_kept,)`` when every head keeps the same ones (always with recency), else ``None``.

    Then the compaction is one slice along the row axis at ``Hkv`` heads instead of a per-head gather.
    """
    kept = np.asarray(kept)
    return kept[0] if kept.shape[0] == 1 or bool((kept == kept[:1]).all()) else None


# ----------------------------------------------------------------------------------- the skeleton
@dataclass
class Compaction:
    """What :func:`decide_and_compact` did.

    Attributes:
        decisions: one per compressible layer, in layer order (full layers included, ``full_layer=True``); empty
            for a policy that does not compress.
        kept_per_layer: rows per KV head of every layer's cache afterwards (``L`` for a full layer), by layer index.
        kv_bytes_full: bytes of the prompt's keys and values before compaction (all layers).
        kv_bytes_kept: bytes held afterwards.
        decide_s: seconds spent deciding and compacting.
    """

    decisions: list[LayerDecision] = field(default_factory=list)
    kept_per_layer: list[int] = field(default_factory=list)
    kv_bytes_full: int = 0
    kv_bytes_kept: int = 0
    decide_s: float = 0.0

    def stats(self, prompt_tokens: int) -> dict[str, Any]:
        """The compaction's part of ``GenerationResult.stats``."""
        return {
            "prompt_tokens": int(prompt_tokens),
            "kept_per_layer": list(self.kept_per_layer),
            "kv_bytes_full": int(self.kv_bytes_full),
            "kv_bytes_kept": int(self.kv_bytes_kept),
            "decide_s": float(self.decide_s),
        }


def decide_and_compact(
    adapter: ModelAdapter, policy: Any, layers: list[LayerSpec], prompt_len: int, backend: Backend
) -> Compaction:
    """Steps 3-4 after a prefill: decide every compressible layer, compact each pruned one.

    A layer the policy keeps whole (``policy.full_layers``) gets :meth:`full_layer_decision` from shapes alone and
    keeps its cache untouched; a sliding-window layer gets no decision. Nothing is compacted for a policy that
    does not compress (``FullCache``).
    """
    start = time.perf_counter()
    full_bytes = sum(adapter.layer_bytes(layer) for layer in layers)
    decisions: list[LayerDecision] = []
    if policy.compresses:
        for layer in layers:
            if not layer.compressible:
                continue
            if not policy.prunes_layer(layer.index):  # Appendix B: kept whole, keys never read
                decisions.append(
                    policy.full_layer_decision(prompt_len, layer.num_heads, layer.num_kv_heads, layer.index)
                )
                continue
            queries, keys = adapter.decision_inputs(layer)
            if backend.name != adapter.name:  # another backend's arrays go through numpy
                queries, keys = adapter.to_numpy(queries), adapter.to_numpy(keys)
            decision = policy.decide_layer(queries, keys, scale=layer.scale, backend=backend, layer=layer.index)
            adapter.compact(layer, decision)
            decisions.append(decision)
    return Compaction(
        decisions=decisions,
        kept_per_layer=[adapter.layer_rows(layer) for layer in layers],
        kv_bytes_full=full_bytes,
        kv_bytes_kept=sum(adapter.layer_bytes(layer) for layer in layers),
        decide_s=time.perf_counter() - start,
    )


@dataclass
class CompactedPrompt:
    """A prompt after :func:`prefill_and_compact`: the compacted cache lives in the adapter.

    Attributes:
        last_logits: ``(vocab,)`` float32 logits of the last prompt position (full cache): they pick the first token.
        compaction: what :func:`decide_and_compact` did.
        prefill_s: seconds of the prefill.
        layers: the model's layer specs.
        backend: the backend the decisions ran on.
    """

    last_logits: np.ndarray
    compaction: Compaction
    prefill_s: float
    layers: list[LayerSpec]
    backend: Backend


def prefill_and_compact(
    adapter: ModelAdapter, ids: list[int], backend: str | Backend | None = None, progress: bool = False
) -> CompactedPrompt:
    """Steps 1-3 for token ids: check them, prefill, decide and compact (the cache stays in ``adapter``).

    Raises:
        ValueError: ids outside the vocabulary, a prompt longer than the context, ``gqa="expand"`` on a GQA
            layer it would prune; all before the forward pass.
    """
    check_token_ids(ids, adapter.vocab_size(), adapter.context_length())
    layers = adapter.layers()
    check_compactable(adapter.policy, layers)
    decider = adapter.decision_backend(backend)
    start = time.perf_counter()
    last_logits = adapter.prefill(ids, progress=progress)
    prefill_s = time.perf_counter() - start
    compaction = decide_and_compact(adapter, adapter.policy, layers, len(ids), decider)
    return CompactedPrompt(last_logits, compaction, prefill_s, layers, decider)


def trace_meta(adapter: ModelAdapter, policy: Any, backend: Backend, layers: list[LayerSpec]) -> dict[str, Any]:
    """``Trace.meta`` before generation fills ``prompt_tokens``, ``temperature`` and ``seed`` (:data:`TRACE_META_KEYS`)."""
    return {
        "backend": adapter.name,
        "decide_backend": backend.name,
        **adapter.describe(),
        "policy": repr(policy),
        "num_layers": len(layers),
        "sliding_layers": [layer.index for layer in layers if not layer.compressible],
    }


def generate(
    adapter: ModelAdapter,
    tokenizer: Any,
    prompt: Any,
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat_template: bool = True,
    stop_at_eos: bool = True,
    progress: bool = False,
    backend: str | Backend | None = None,
) -> GenerationResult:
    """Prefill -> decide -> compact -> decode ``prompt`` on ``adapter``'s model with ``adapter.policy``.

    Args:
        adapter: the framework's :class:`ModelAdapter` (it holds the model and the policy).
        tokenizer: encodes string and chat prompts, decodes the result (``None`` with token ids: no text).
        prompt, chat_template: see :func:`encode_prompt`.
        max_new_tokens: decode steps (fewer when an end-of-sequence id comes and ``stop_at_eos``).
        temperature, top_p, seed: see :class:`Sampler`.
        progress: tqdm bars.
        backend: the decision backend (see :meth:`ModelAdapter.decision_backend`).

    Returns:
        :class:`~refreekv_edu.generate.GenerationResult` with ``stats`` (``STATS_KEYS``) and ``trace.meta``
        (:data:`TRACE_META_KEYS`).
    """
    policy = adapter.policy
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    sampler = Sampler(temperature, top_p, seed)  # bad sampling options fail here, before any model work
    ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)  # 1. encode and check
    check_token_ids(ids, adapter.vocab_size(), adapter.context_length(), max_new_tokens)

    prompt_state = prefill_and_compact(adapter, ids, backend, progress)  # 2-4. prefill, decide, compact

    start = time.perf_counter()  # 5. decode through the compacted cache
    eos = eos_ids(*adapter.eos_sources(), tokenizer) if stop_at_eos else set()
    tokens, first_logits = decode(adapter.forward, prompt_state.last_logits, sampler, max_new_tokens, eos, progress)
    decode_s = time.perf_counter() - start

    stats = prompt_state.compaction.stats(len(ids))  # 6. one stats dict, one Trace.meta
    stats.update(new_tokens=len(tokens), prefill_s=prompt_state.prefill_s, decode_s=decode_s)
    meta = trace_meta(adapter, policy, prompt_state.backend, prompt_state.layers)
    meta.update(prompt_tokens=len(ids), temperature=float(temperature),
                seed=None if seed is None else int(seed))
    trace = Trace(layers=prompt_state.compaction.decisions, tokens=display_tokens(tokenizer, ids), meta=meta)
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else ""
    return GenerationResult(text=text, tokens=tokens, trace=trace, stats=stats, first_logits=first_logits)
