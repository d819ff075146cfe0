"""``generate()`` for mlx-lm models: prefill -> decide -> compact -> decode.

1. **Prefill** the whole prompt with full caches (:func:`refreekv_mlx.prefill.prefill`); the last
   prompt position's logits pick the first new token, so that token saw the full cache.
2. **Decide** per compressible layer: ``policy.decide_layer(queries (Hq, r, D), keys (Hkv, L, D),
   scale=attn.scale, layer=i)`` with ``r = policy.query_rows`` (1 for the paper, ``w`` for H2O/SnapKV).
   A layer in ``policy.full_layers`` (the paper: 0 and 1) gets a decision with ``full_layer=True``.
3. **Compact**: replace the layer's ``KVCache`` with a :class:`~refreekv_mlx.cache.CompressedKVCache`
   holding only the kept rows of each KV head (real memory freed); a full layer keeps the model's own
   ``KVCache``, untouched. When all KV heads keep the same positions (always with the recency ranking)
   the compaction is one slice along the row axis at ``Hkv`` heads.
4. **Decode** token by token; every step attends to the compacted cache, new rows are appended,
   RoPE positions continue from ``L``.

No query ever attends to a cache pruned during its own forward call: pruning happens strictly
between the prefill call and the first decode call.

``GenerationResult.first_logits`` are the logits of the first decode step, i.e. the first
prediction made *through the compacted cache* (the prediction of the second new token); the
prefill logits would be the same for every policy and say nothing about fidelity. Same
convention as the torch backend (``refreekv_torch.generation``), including its fallback to the
prefill logits when no decode step runs (``max_new_tokens=1`` or an EOS first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from refreekv_edu.decision import LayerDecision, Trace
from refreekv_edu.generate import GenerationResult

from .adapter import attention_layers, describe
from .cache import CompressedKVCache
from .prefill import PrefillResult, prefill


@dataclass
class CompressedPrompt:
    """A prompt after prefill + decide + compact, ready to decode.

    Attributes:
        cache: one mlx-lm cache per layer: ``CompressedKVCache`` for compacted layers, the model's own
            cache otherwise (sliding-window layers, the policy's ``full_layers``, or every layer under
            ``FullCache``).
        decisions: one decision per compressible (global-attention) layer, in layer order, full layers
            included (``full_layer=True``, budget 1.0), so that ``Trace.mean_budget`` counts them at 100%.
        last_logits: ``(vocab,)`` float32 logits at the last prompt position (full cache).
        prompt_len: ``L``.
        kv_bytes_full: bytes the prompt's K and V take uncompressed, all cached layers.
        kv_bytes_kept: bytes held right after compaction.
        kept_per_layer: rows per KV head of each global-attention layer after compaction (``L`` for a full
            layer).
        prefill_s, decide_s: seconds.
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


def _decide_backend(name: Any) -> Any:
    """``None`` / ``"auto"``: the MLX backend when it imports, else the numpy reference."""
    from refreekv_edu.backend import get_backend

    if name not in (None, "auto"):
        return get_backend(name)
    try:
        return get_backend("mlx")
    except Exception:  # noqa: BLE001 - MLX backend missing or broken: decide with the reference
        return get_backend("numpy")


def _layer_bytes_full(cache: Any, prompt_len: int) -> int:
    """Bytes of the prompt's K and V in one layer without compression (exact rows, no buffer slack)."""
    keys, values = cache.keys, cache.values
    if keys is None:
        return 0
    rows = min(prompt_len, keys.shape[2]) if hasattr(cache, "max_size") else prompt_len
    per_row = (keys.nbytes // keys.shape[2]) + (values.nbytes // values.shape[2])
    return int(per_row * rows)


def _check_compactable(model: nn.Module, policy: Any) -> None:
    """Refuse, before any work, what cannot be compacted: ``gqa="expand"`` on a GQA model."""
    if not policy.compresses or policy.gqa != "expand":
        return
    for layer in attention_layers(model):
        if layer.compressible and policy.prunes_layer(layer.index) and layer.n_heads != layer.n_kv_heads:
            raise ValueError(
                f"gqa='expand' keeps one set per query head ({layer.n_heads}), but this GQA model caches "
                f"{layer.n_kv_heads} KV heads: the cache cannot be compacted that way. Use gqa='group', or call "
                "policy.decide_layer() directly to study the expand decisions."
            )


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

    Returns:
        a :class:`CompressedPrompt`; sliding-window layers and the policy's ``full_layers`` keep the model's
        own cache.

    Raises:
        ValueError: ``gqa="expand"`` on a GQA model (its kept sets are per query head, so a cache that
            stores ``Hkv`` heads cannot be compacted; use ``gqa="group"``), or an unsupported family.
    """
    _check_compactable(model, policy)
    t0 = time.perf_counter()
    # The decision reads the queries of the last policy.query_rows positions (1 for the paper; never
    # policy.window, which is 0 for the paper).
    pre: PrefillResult = prefill(model, tokens, query_rows=policy.query_rows, chunk_size=chunk_size, progress=progress)
    prefill_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    backend = _decide_backend(backend)
    cache = list(pre.cache)
    decisions: list[LayerDecision] = []
    full_bytes = sum(_layer_bytes_full(c, pre.prompt_len) for c in cache)
    for layer in pre.layers:
        if not layer.compressible or not policy.compresses:
            continue
        queries, keys = pre.queries(layer.index), pre.keys(layer.index)
        if backend.name == "numpy":
            queries, keys = np.array(queries), np.array(keys)
        decision = policy.decide_layer(queries, keys, scale=layer.scale, backend=backend, layer=layer.index)
        if not decision.full_layer:  # a full layer (Appendix B) keeps the model's own cache, untouched
            cache[layer.index] = CompressedKVCache.from_kv_cache(cache[layer.index], decision.kept)
        decisions.append(decision)
    decide_s = time.perf_counter() - t1

    global_layers = [a.index for a in pre.layers if a.compressible]
    kept_per_layer = [
        c.rows if isinstance(c, CompressedKVCache) else pre.prompt_len for c in (cache[i] for i in global_layers)
    ]
    kept_bytes = sum(
        c.nbytes if isinstance(c, CompressedKVCache) else _layer_bytes_full(c, pre.prompt_len) for c in cache
    )
    return CompressedPrompt(
        cache=cache,
        decisions=decisions,
        last_logits=pre.last_logits,
        prompt_len=pre.prompt_len,
        kv_bytes_full=int(full_bytes),
        kv_bytes_kept=int(kept_bytes),
        kept_per_layer=kept_per_layer,
        prefill_s=prefill_s,
        decide_s=decide_s,
        meta={"decide_backend": backend.name},
    )


def encode_prompt(tokenizer: Any, prompt: Any, chat_template: bool = True) -> list[int]:
    """Prompt -> token ids.

    ``prompt`` may be a string (the chat template is applied when the tokenizer has one and
    ``chat_template`` is true), a list of chat messages (``{"role", "content"}`` dicts), or token ids
    (list, numpy or mx array).
    """
    if isinstance(prompt, mx.array | np.ndarray):
        return [int(t) for t in np.array(prompt).reshape(-1)]
    if isinstance(prompt, str):
        if chat_template and getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
        else:
            return list(tokenizer.encode(prompt))
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(m, dict) for m in prompt):
        ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(t, int | np.integer) for t in prompt):
        return [int(t) for t in prompt]
    raise TypeError(
        f"prompt must be a string, a list of chat messages or a non-empty list of token ids; got {type(prompt).__name__}"
    )


def _eos_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return ids


class _Sampler:
    """Greedy for ``temperature == 0``; otherwise softmax (nucleus when ``top_p < 1``) sampling, seeded MLX key per step."""

    def __init__(self, temperature: float, seed: int, top_p: float = 1.0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.key = mx.random.key(seed)

    def __call__(self, logits: mx.array) -> int:
        if self.temperature == 0.0:
            return int(mx.argmax(logits, axis=-1).item())
        logits = logits / self.temperature
        if self.top_p < 1.0:
            # Keep the most likely tokens until their mass covers top_p; the rest get -inf.
            probs = mx.softmax(logits, axis=-1)
            order = mx.argsort(-probs)
            sorted_probs = probs[order]
            outside = (mx.cumsum(sorted_probs) - sorted_probs) > self.top_p
            dropped = mx.zeros(logits.shape, dtype=mx.bool_)
            dropped[order] = outside
            logits = mx.where(dropped, -mx.inf, logits)
        self.key, sub = mx.random.split(self.key)
        return int(mx.random.categorical(logits, key=sub).item())


def decode(
    model: nn.Module,
    cache: list[Any],
    last_logits: mx.array,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: set[int] | None = None,
    progress: bool = False,
) -> tuple[list[int], mx.array]:
    """Sample up to ``max_new_tokens`` tokens, the first from ``last_logits``, each next one after a decode step.

    Returns:
        ``(tokens, first_logits)``: generated ids (ending with the EOS id when one came) and the ``(vocab,)``
        logits of the first decode step through ``cache``; with ``max_new_tokens == 1`` or an EOS first
        there is no decode step and ``last_logits`` are returned (as the torch backend does).
    """
    sampler = _Sampler(temperature, seed, top_p)
    eos_ids = eos_ids or set()
    steps = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="decode", leave=False)
    tokens: list[int] = []
    logits = last_logits
    first_logits = None
    for step in steps:
        token = sampler(logits)
        tokens.append(token)
        if token in eos_ids or step == max_new_tokens - 1:
            break
        # One decode step through the (compacted) cache; its logits pick the next token.
        logits = model(mx.array([[token]]), cache=cache)[0, -1].astype(mx.float32)
        if first_logits is None:
            first_logits = logits
    return tokens, (last_logits if first_logits is None else first_logits)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: Any,
    policy: Any,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    *,
    top_p: float = 1.0,
    chat_template: bool = True,
    chunk_size: int = 512,
    backend: Any = None,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Generate from ``prompt`` with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: an mlx-lm model (llama, mistral, qwen2, qwen3, gemma3) and its tokenizer.
        prompt: string (chat template applied), chat messages, or token ids.
        policy: ``ReFreeKV(...)``, ``FixedBudget(...)`` or ``FullCache()``.
        max_new_tokens: tokens to generate (fewer when an EOS token comes first and ``stop_at_eos``).
        temperature: 0 for greedy, else softmax sampling at this temperature with ``seed``.
        top_p: nucleus sampling mass (1.0: the whole distribution); ignored when greedy.
        progress: show tqdm bars over prefill chunks and decode steps.
        chat_template: apply the tokenizer's chat template to string prompts.
        chunk_size: prefill chunk length.
        backend: backend for the decisions, a name or instance (``None``: MLX if it imports, else numpy).
        stop_at_eos: stop at the tokenizer's EOS ids.
    """
    _Sampler(temperature, seed, top_p)  # bad sampling options fail here, before the (long) prefill
    tokens = encode_prompt(tokenizer, prompt, chat_template=chat_template)
    compressed = compress_prompt(model, tokens, policy, chunk_size=chunk_size, backend=backend, progress=progress)
    t0 = time.perf_counter()
    new_tokens, first_logits = decode(
        model,
        compressed.cache,
        compressed.last_logits,
        max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        eos_ids=_eos_ids(tokenizer) if stop_at_eos else None,
        progress=progress,
    )
    decode_s = time.perf_counter() - t0
    trace = Trace(
        layers=compressed.decisions,
        tokens=[tokenizer.decode([t]) for t in tokens],
        meta={
            "backend": "mlx",
            "model": describe(model),
            "policy": repr(policy),
            "decide_backend": compressed.meta["decide_backend"],
            "prompt_len": compressed.prompt_len,
        },
    )
    stats = {
        "prompt_tokens": compressed.prompt_len,
        "new_tokens": len(new_tokens),
        "kept_per_layer": compressed.kept_per_layer,
        "kv_bytes_full": compressed.kv_bytes_full,
        "kv_bytes_kept": compressed.kv_bytes_kept,
        "prefill_s": compressed.prefill_s,
        "decide_s": compressed.decide_s,
        "decode_s": decode_s,
    }
    return GenerationResult(
        text=tokenizer.decode(new_tokens, skip_special_tokens=True),
        tokens=new_tokens,
        trace=trace,
        stats=stats,
        first_logits=np.array(first_logits),
    )
