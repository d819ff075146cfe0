"""``generate()`` for transformers models: the core skeleton with the transformers pieces.

:func:`refreekv_edu.generate` lands here for a transformers model. The loop itself (encode, check, prefill,
decide, compact, decode, stats) is :func:`refreekv_edu.integration.generate`; this module only opens a
:class:`~.hf_compress.Compressor` (capture hooks, the attention switch, restored on exit) around it and
hands over its :class:`~.hf_compress.TransformersAdapter`.
"""

from __future__ import annotations

from typing import Any

import torch

from refreekv_edu import integration
from refreekv_edu.generate import GenerationResult
from refreekv_edu.integration import display_tokens, encode_prompt

from .hf_compress import Compressor

__all__ = ["generate", "encode_prompt", "display_tokens"]


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompt: Any, policy: Any, max_new_tokens: int = 64, *, backend: Any = None, **options: Any
) -> GenerationResult:
    """Generate with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: a transformers causal LM (batch 1) and its tokenizer (may be ``None`` when ``prompt``
            is a list of token ids).
        prompt: a string (the chat template is applied when ``chat_template`` and the tokenizer has one),
            chat messages, or token ids.
        policy: ``ReFreeKV(...)``, ``FixedBudget(...)`` or ``FullCache()``.
        max_new_tokens: decode steps (fewer when an end-of-sequence token comes and ``stop_at_eos``).
        backend: the decision backend (default: torch on the model's device if its backend imports, else numpy).
        **options: ``temperature``, ``top_p``, ``seed``, ``chat_template``, ``stop_at_eos``, ``progress``, as
            :func:`refreekv_edu.integration.generate` takes them (greedy by default).

    Returns:
        :class:`refreekv_edu.GenerationResult`. ``first_logits`` holds the ``(vocab,)`` float32 logits of the
        first decode step, i.e. the first forward that reads the compressed cache (the distribution of the
        second new token); with ``max_new_tokens=1`` there is none and the prefill's logits are returned.
    """
    press = Compressor(model, policy, backend=backend, auto=False)
    was_training = model.training
    model.eval()
    try:
        with press:
            return integration.generate(press.adapter, tokenizer, prompt, max_new_tokens, backend=press.backend, **options)
    finally:
        if was_training:
            model.train()
