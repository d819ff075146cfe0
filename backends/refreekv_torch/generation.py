"""``generate()`` for transformers models: prefill -> decide -> compact -> decode, each phase timed.

This is the loop :func:`refreekv_edu.generate` runs for a transformers model. It is written out
(rather than calling ``model.generate``) so that a reader sees the four phases and so that each
is timed on its own:

1. **prefill**: one forward over the prompt into an empty ``DynamicCache``; the compressor's hooks
   capture the last ``policy.query_rows`` attention inputs of every pruned layer;
2. **decide + compact**: :meth:`Compressor.compact` (see :mod:`.hf_compress`);
3. **decode**: one token per forward, positions continuing from ``L``; greedy (``temperature=0``) or
   sampled with a seeded generator.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from refreekv_edu.decision import Trace
from refreekv_edu.generate import GenerationResult

from . import hf_adapter
from .hf_compress import Compressor, layer_bytes, layer_rows


def encode_prompt(tokenizer: Any, prompt: Any, chat_template: bool = True) -> list[int]:
    """Token ids for ``prompt``: a string (chat template applied when the tokenizer has one), chat messages, or ids."""
    if isinstance(prompt, str):
        if chat_template and getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
        else:
            return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
        return [int(t) for t in prompt]
    raise TypeError(
        "prompt must be a non-empty string, a list of chat messages ({'role': ..., 'content': ...}) "
        f"or a list of token ids; got {type(prompt).__name__}"
    )


def display_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """One readable string per token (for traces and widgets)."""
    if tokenizer is None:
        return [str(t) for t in ids]
    return [tokenizer.decode([t]) for t in ids]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is None:
            continue
        found.update([value] if isinstance(value, int) else list(value))
    return found


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from ``(vocab,)`` logits: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)  # the seeded generator lives on the CPU
    if top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # drop tokens once top_p mass is covered
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, sorted_ids, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: Any,
    policy: Any,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    chat_template: bool = True,
    stop_at_eos: bool = True,
    backend: Any = None,
) -> GenerationResult:
    """Generate with the KV cache compressed by ``policy`` at the end of prefill.

    Args:
        model, tokenizer: a transformers causal LM (batch 1) and its tokenizer (may be ``None`` when ``prompt``
            is a list of token ids).
        prompt: a string (the chat template is applied when ``chat_template`` and the tokenizer has one),
            chat messages, or token ids.
        policy: ``ReFreeKV(...)``, ``FixedBudget(...)`` or ``FullCache()``.
        max_new_tokens: decode steps (fewer when an end-of-sequence token comes and ``stop_at_eos``).
        temperature: 0 for greedy decoding, else sampling (with ``top_p``) from a generator seeded by ``seed``.
        progress: show a tqdm bar over decode steps.
        backend: the decision backend (default: torch if its refreekv backend imports, else numpy).

    Returns:
        :class:`refreekv_edu.GenerationResult`. ``first_logits`` holds the ``(vocab,)`` float32 logits of the
        first decode step, i.e. the first forward that reads the compressed cache (the distribution of the
        second new token); with ``max_new_tokens=1`` there is none and the prefill's logits are returned.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if isinstance(prompt, str) and tokenizer is None:
        raise ValueError("a string prompt needs a tokenizer; pass token ids instead or give the tokenizer")
    ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
    device = next(model.parameters()).device
    press = Compressor(model, policy, backend=backend, auto=False)
    generator = torch.Generator(device="cpu").manual_seed(int(seed)) if temperature > 0 else None
    eos = _eos_ids(model, tokenizer) if stop_at_eos else set()
    was_training = model.training
    model.eval()

    try:
        with press:
            # 1. prefill
            start = time.perf_counter()
            cache = DynamicCache(config=model.config)
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            prefill_s = time.perf_counter() - start

            # 2. decide + compact
            start = time.perf_counter()
            if policy.compresses:
                trace = press.compact(cache)
                stats = press.stats.as_dict()
            else:
                trace = Trace(meta=press.trace.meta)
                held = sum(layer_bytes(layer) for layer in cache.layers)
                stats = {
                    "kept_per_layer": [layer_rows(layer) for layer in cache.layers],
                    "kv_bytes_full": held,
                    "kv_bytes_kept": held,
                }
            decide_s = time.perf_counter() - start

            # 3. decode: feed one token at a time; the cache reports the logical length, so positions continue at L.
            start = time.perf_counter()
            tokens: list[int] = []
            first_logits = None
            steps = range(max_new_tokens)
            if progress:
                from tqdm.auto import tqdm

                steps = tqdm(steps, desc="decode", leave=False)
            for step in steps:
                token = _pick(logits, temperature, top_p, generator)
                tokens.append(token)
                if token in eos or step == max_new_tokens - 1:
                    break
                out = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True)
                logits = out.logits[0, -1].float()
                if first_logits is None:
                    first_logits = logits.cpu().numpy().copy()
            if first_logits is None:
                first_logits = logits.cpu().numpy().copy()
            decode_s = time.perf_counter() - start
    finally:
        if was_training:
            model.train()

    L = len(ids)
    stats.update(prompt_tokens=L, new_tokens=len(tokens), prefill_s=prefill_s, decide_s=decide_s, decode_s=decode_s)
    trace.tokens = display_tokens(tokenizer, ids)
    trace.meta.update(prompt_tokens=L, temperature=temperature, seed=seed, model_type=hf_adapter.model_type(model))
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else ""
    return GenerationResult(text=text, tokens=tokens, trace=trace, stats=stats, first_logits=first_logits)
