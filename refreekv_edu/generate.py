"""``generate()``: prefill -> decide -> compact -> decode, on whichever backend owns the model.

The core does not know transformers or mlx-lm. It asks each installed backend
whether it owns ``model`` (:meth:`Backend.owns_model`) and hands the work to it.
Every backend returns the same :class:`GenerationResult`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .backend import BackendConfigError, _entry_points, get_backend
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


#: The chat roles a message may have (the roles chat templates know; SmolLM2's renders any, others raise).
CHAT_ROLES = ("system", "user", "assistant", "tool")


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (``np.int64(3)`` is an integer); False for bools, floats and strings."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy bools are not Integral


def check_max_new_tokens(value: Any) -> int:
    """``max_new_tokens`` as an int >= 1 (numpy integers accepted; bools, floats and strings refused)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1 (numpy integers are fine), got {value!r} "
                         f"({type(value).__name__})")
    return int(value)


def check_prompt(prompt: Any) -> None:
    """Refuse, before any model work, prompts that cannot be one sequence: batches, empty prompts, bad ids.

    Accepted: a non-empty string, a non-empty list of chat messages (dicts with a ``role`` in :data:`CHAT_ROLES`
    and a string ``content``), or token ids as a non-empty flat list of non-negative ints or a 1-D array (``(1, n)`` is accepted as one row).
    The backends check ids against the vocabulary and the length against the model's context.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty; pass some text, chat messages or token ids")
        return
    shape = getattr(prompt, "shape", None)
    if shape is not None:
        dims = tuple(int(s) for s in shape)
        if len(dims) == 2 and dims[0] == 1:
            dims = dims[1:]
        if len(dims) != 1:
            raise ValueError(
                f"prompt ids of shape {tuple(int(s) for s in shape)} look like a batch; generate() takes one "
                "sequence (batch 1): call it once per prompt"
            )
        if dims[0] == 0:
            raise ValueError("prompt holds no token ids")
        return
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt is an empty list; pass some text, chat messages or token ids")
        if all(isinstance(m, dict) for m in prompt):
            for i, m in enumerate(prompt):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise ValueError(f"each chat message needs a string 'role' and 'content', got {m!r}")
                if m["role"] not in CHAT_ROLES:
                    raise ValueError(
                        f"chat message {i} has role {m['role']!r}; the roles are: {', '.join(CHAT_ROLES)}"
                    )
            return
        if any(isinstance(t, (list, tuple)) or getattr(t, "shape", ()) != () for t in prompt):
            raise ValueError("prompt is a list of sequences (a batch); generate() takes one sequence: call it per prompt")
        for t in prompt:
            if not is_int(t):
                raise TypeError(f"token ids must be ints, got {t!r} ({type(t).__name__})")
            if int(t) < 0:
                raise ValueError(f"token ids must be >= 0, got {int(t)}")
        return
    raise TypeError(
        f"prompt must be a string, a list of chat messages or token ids; got {type(prompt).__name__}"
    )


def check_sampling(options: dict[str, Any]) -> None:
    """``temperature`` must be a finite real number >= 0 (0 = greedy); ``seed`` an int (numpy numbers accepted)."""
    if "temperature" in options and options["temperature"] is not None:
        t = options["temperature"]
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")
    if "seed" in options and options["seed"] is not None:
        if not is_int(options["seed"]):
            raise TypeError(f"seed must be an int, got {options['seed']!r}")


def generate(
    model: Any, tokenizer: Any, prompt: Any, policy: Any = None, max_new_tokens: int = 64, **kwargs: Any
) -> GenerationResult:
    """Generate from ``prompt`` with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: as returned by :func:`refreekv_edu.load_model` (or the model library directly).
        prompt: a string (the chat template is applied), a list of chat messages, or a list of token ids.
        policy: a policy (``ReFreeKV()``, ``FixedBudget(...)``, ``FullCache()``); ``None`` means ``ReFreeKV()``.
        max_new_tokens: decode steps, an int >= 1 (numpy integers accepted).
        **kwargs: backend options, e.g. ``temperature``, ``seed``, ``chat_template``, ``progress``.
    """
    from .policies import Policy, ReFreeKV

    if policy is None:
        policy = ReFreeKV()
    if not isinstance(policy, Policy):
        raise TypeError(
            f"policy must be a refreekv_edu policy (ReFreeKV, FixedBudget, FullCache), got {type(policy).__name__}"
        )
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    check_prompt(prompt)
    check_sampling(kwargs)
    tried = []
    for name in _entry_points():
        if name == "numpy":
            continue
        try:
            backend = get_backend(name)
        except BackendConfigError:
            raise  # installed but misconfigured: the message names the setting
        except Exception:  # noqa: BLE001 - not installed here
            continue
        tried.append(name)
        if backend.owns_model(model):
            return backend.generate(model, tokenizer, prompt, policy, max_new_tokens=max_new_tokens, **kwargs)
    raise TypeError(
        f"no installed backend knows models of type {type(model).__module__}.{type(model).__name__} "
        f"(installed model backends: {', '.join(tried) or 'none'}); load it with refreekv_edu.load_model()"
    )
