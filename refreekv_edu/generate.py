"""``generate()``: prefill -> decide -> compact -> decode, on whichever backend owns the model.

The core does not know transformers or mlx-lm. It asks each installed backend
whether it owns ``model`` (:meth:`Backend.owns_model`) and hands the work to it.
Every backend returns the same :class:`GenerationResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backend import _entry_points, get_backend
from .decision import Trace

#: Keys every backend fills in ``GenerationResult.stats``.
STATS_KEYS = (
    "prompt_tokens",  # int, L
    "new_tokens",  # int, tokens generated
    "kept_per_layer",  # list[int], rows kept per head in each cached layer after compaction
    "kv_bytes_full",  # int, bytes the prompt's K and V would take uncompressed (all cached layers)
    "kv_bytes_kept",  # int, bytes actually held after compaction
    "prefill_s",  # float seconds
    "decide_s",  # float seconds (decisions + compaction)
    "decode_s",  # float seconds
)


@dataclass
class GenerationResult:
    """What :func:`generate` returns.

    Attributes:
        text: the decoded continuation (without the prompt).
        tokens: generated token ids, length ``new_tokens``.
        trace: the per-layer decisions (empty layers list for ``FullCache``).
        stats: see :data:`STATS_KEYS`; backends may add more.
        first_logits: ``(vocab,)`` float32 logits of the first decoded token (numpy), for fidelity metrics.
    """

    text: str
    tokens: list[int]
    trace: Trace
    stats: dict[str, Any] = field(default_factory=dict)
    first_logits: Any = None

    @property
    def kv_kept_fraction(self) -> float:
        """``kv_bytes_kept / kv_bytes_full`` (1.0 when unknown)."""
        full = self.stats.get("kv_bytes_full") or 0
        return self.stats.get("kv_bytes_kept", full) / full if full else 1.0

    def __repr__(self) -> str:
        return (
            f"GenerationResult(text={self.text[:60]!r}{'...' if len(self.text) > 60 else ''}, "
            f"new_tokens={len(self.tokens)}, kv_kept={100 * self.kv_kept_fraction:.1f}%)"
        )


def generate(
    model: Any, tokenizer: Any, prompt: Any, policy: Any = None, max_new_tokens: int = 64, **kwargs: Any
) -> GenerationResult:
    """Generate from ``prompt`` with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: as returned by :func:`refreekv_edu.load_model` (or the model library directly).
        prompt: a string (the chat template is applied), a list of chat messages, or a list of token ids.
        policy: a policy (``ReFreeKV()``, ``FixedBudget(...)``, ``FullCache()``); ``None`` means ``ReFreeKV()``.
        max_new_tokens: decode steps.
        **kwargs: backend options, e.g. ``temperature``, ``seed``, ``chat_template``, ``progress``.
    """
    from .policies import Policy, ReFreeKV

    if policy is None:
        policy = ReFreeKV()
    if not isinstance(policy, Policy):
        raise TypeError(
            f"policy must be a refreekv_edu policy (ReFreeKV, FixedBudget, FullCache), got {type(policy).__name__}"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    tried = []
    for name in _entry_points():
        if name == "numpy":
            continue
        try:
            backend = get_backend(name)
        except Exception:  # noqa: BLE001 - not installed here
            continue
        tried.append(name)
        if backend.owns_model(model):
            return backend.generate(model, tokenizer, prompt, policy, max_new_tokens=max_new_tokens, **kwargs)
    raise TypeError(
        f"no installed backend knows models of type {type(model).__module__}.{type(model).__name__} "
        f"(installed model backends: {', '.join(tried) or 'none'}); load it with refreekv_edu.load_model()"
    )
