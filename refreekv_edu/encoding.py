"""Step 1 of the generation skeleton (:mod:`refreekv_edu.integration`): a prompt to token ids, checked.

:func:`encode_prompt` turns a string (through the chat template), chat messages or token ids into ids;
:func:`check_token_ids` refuses, before any forward pass, ids outside the vocabulary and sequences longer than the
model's context; :func:`eos_ids` collects the end-of-sequence ids that stop decoding; :func:`display_tokens` gives
one readable string per token for traces and widgets. The same for every framework; numpy and the standard
library only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .generate import check_prompt


def encode_prompt(tokenizer: Any, prompt: Any, chat_template: bool = True) -> list[int]:
    """Token ids for ``prompt``.

    Args:
        tokenizer: a Hugging Face style tokenizer (``encode``, ``apply_chat_template``, ``chat_template``); may be
            ``None`` when ``prompt`` is token ids.
        prompt: a string (wrapped as one user message when ``chat_template`` and the tokenizer has a template),
            a list of chat messages (``{"role", "content"}``), or token ids (a list, or a 1-D / ``(1, n)`` array of
            any framework).
        chat_template: apply the tokenizer's chat template to a string prompt.

    Raises:
        ValueError / TypeError: see :func:`refreekv_edu.generate.check_prompt`; a string without a tokenizer; a
            prompt that encodes to no tokens.
    """
    check_prompt(prompt)
    if hasattr(prompt, "shape") and hasattr(prompt, "tolist"):  # numpy, torch, mlx arrays
        ids = np.asarray(prompt.tolist()).reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got an array of {ids.dtype}")
        return [int(t) for t in ids]
    if isinstance(prompt, str) or isinstance(prompt[0], dict):
        if tokenizer is None:
            raise ValueError("a text or chat prompt needs a tokenizer; pass token ids or give the tokenizer")
        if isinstance(prompt, str) and not (chat_template and getattr(tokenizer, "chat_template", None)):
            ids = list(tokenizer.encode(prompt))
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # a BatchEncoding
                ids = ids["input_ids"]
        if not ids:
            raise ValueError("the prompt encodes to no tokens; pass some text")
        return [int(t) for t in ids]
    return [int(t) for t in prompt]


def check_token_ids(
    ids: list[int], vocab_size: int | None, context_length: int | None, max_new_tokens: int = 0
) -> None:
    """Refuse, before the forward pass, ids outside ``[0, vocab_size)`` and sequences longer than the context.

    Raises:
        ValueError: naming the offending id and the vocabulary size, or the prompt length and the context length.
    """
    if not ids:
        raise ValueError("prompt holds no token ids")
    low, high = min(ids), max(ids)
    if low < 0:
        raise ValueError(f"token ids must be >= 0, got {low}")
    if vocab_size is not None and high >= vocab_size:
        raise ValueError(
            f"token id {high} is out of range: the model's vocabulary has {vocab_size} tokens (ids 0..{vocab_size - 1})"
        )
    if context_length is not None:
        if len(ids) > context_length:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but the model's context is {context_length} tokens; shorten it"
            )
        if len(ids) + max_new_tokens > context_length:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) plus max_new_tokens={max_new_tokens} exceed the model's context of "
                f"{context_length} tokens; ask for at most {context_length - len(ids)} new tokens"
            )


def eos_ids(*sources: Any) -> set[int]:
    """Every ``eos_token_id`` (int or list) and ``eos_token_ids`` found on ``sources`` (tokenizers, generation configs)."""
    found: set[int] = set()
    for source in sources:
        for attr in ("eos_token_id", "eos_token_ids"):
            value = getattr(source, attr, None) if source is not None else None
            if value is None:
                continue
            found.update([int(value)] if isinstance(value, (int, np.integer)) else (int(v) for v in value))
    return found


def display_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """One readable string per token, for traces and widgets (the ids as text without a tokenizer)."""
    if tokenizer is None:
        return [str(t) for t in ids]
    return [tokenizer.decode([t]) for t in ids]
