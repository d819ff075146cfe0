"""kvpress presses as evaluation baselines: ``kvpress:<press>@matched`` in ``refreekv-edu eval`` (the kvpress extra).

:func:`generate_with_press` runs one prompt the way :func:`refreekv_edu.generate` does (the same prompt encoding,
greedy decoding, end-of-sequence ids and ``first_logits``), but lets a kvpress press compress the cache at the
end of prefill instead of a ReFreeKV policy. The press's compression ratio is ``1 - budget``: with
``budget`` = the paper preset's mean budget on the same sample, both keep the same share of the whole cache;
kvpress spreads it uniformly over the layers (layers 0 and 1 too), ReFreeKV decides per layer.

The cache rows are counted after the prefill, so ``kv_bytes_kept`` is what the press really left (kvpress's
scorer presses gather the kept rows: memory is freed). AdaKV is different: it chooses a budget per head, so the
heads of a layer keep different rows and kvpress cannot gather them; it *masks* the evicted keys instead (its
attention patch replaces them, while decoding, by a key whose attention weight underflows to 0). Its budget is
the unmasked share and ``kv_bytes_kept`` stays the full cache's: no memory is freed. Decoding passes explicit
positions: a compressed cache holds fewer rows than the tokens seen, so the next position is the prompt length
plus the step, not the cache's length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from refreekv_edu.encoding import encode_prompt, eos_ids
from refreekv_edu.eval.methods import KVPRESS_MASKING
from refreekv_edu.generate import GenerationResult
from refreekv_edu.sampling import Sampler, decode

from . import hf_adapter
from .hf_cache import layer_bytes, layer_rows

#: ``kvpress:<name>@matched`` -> (kvpress class name, extra keyword arguments). StreamingLLM keeps 4 sinks, as
#: the paper's method does. SnapKV observes the last 8 queries, like this package's own ``snapkv`` baseline
#: (``--window``): kvpress's default window of 64 is longer than the short prompts and fails on them. AdaKV wraps
#: a scorer press (``"press"``: built first, at the same ratio): SnapKV's scores, as in the AdaKV paper's Ada-SnapKV.
PRESS_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "streamingllm": ("StreamingLLMPress", {"n_sink": 4}),
    "snapkv": ("SnapKVPress", {"window_size": 8}),
    "tova": ("TOVAPress", {}),
    "knorm": ("KnormPress", {}),
    "expected_attention": ("ExpectedAttentionPress", {}),
    "adakv": ("AdaKVPress", {"press": ("SnapKVPress", {"window_size": 8})}),
}


def make_press(name: str, compression_ratio: float) -> Any:
    """The kvpress press ``name`` (see :data:`PRESS_CLASSES`) at ``compression_ratio`` in ``[0, 1)``."""
    if name not in PRESS_CLASSES:
        raise ValueError(f"unknown kvpress press {name!r}; presses: {', '.join(PRESS_CLASSES)}")
    if not 0.0 <= compression_ratio < 1.0:
        raise ValueError(f"compression_ratio must lie in [0, 1), got {compression_ratio!r}")
    try:
        import kvpress
    except ImportError as exc:
        raise RuntimeError(f'kvpress is not installed ({exc}): pip install -e ".[torch,kvpress]"') from None
    cls_name, extra = PRESS_CLASSES[name]
    if "press" in extra:  # a wrapper (AdaKV): the ratio belongs to the scorer press it wraps
        inner_name, inner_extra = extra["press"]
        inner = getattr(kvpress, inner_name)(compression_ratio=float(compression_ratio), **inner_extra)
        return getattr(kvpress, cls_name)(press=inner, **{k: v for k, v in extra.items() if k != "press"})
    return getattr(kvpress, cls_name)(compression_ratio=float(compression_ratio), **extra)


def _attention_modules(model: Any) -> list[Any]:
    """The attention module of every decoder layer, in layer order (where kvpress's hooks sit)."""
    return [layer.self_attn for layer in hf_adapter.decoder_layers(model)]


def masked_rows(model: Any, n_rows: int) -> list[float]:
    """Per layer, the mean over KV heads of the rows a masking press left visible after the prefill.

    kvpress stores the masked ``(batch, head, position)`` triples as ``module.masked_key_indices``; a layer whose
    press masked nothing has ``None`` and keeps all ``n_rows``.
    """
    rows = []
    for attn in _attention_modules(model):
        masked = getattr(attn, "masked_key_indices", None)
        heads = int(getattr(attn.config, "num_key_value_heads", 1) or 1)
        rows.append(n_rows - (0.0 if masked is None else len(masked[2]) / heads))
    return rows


def _require_masking_attention(model: Any) -> None:
    # kvpress wraps the attention functions registered when it was imported; one registered later (or an
    # implementation it does not know) would ignore the masks and silently decode with the full cache.
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = hf_adapter.text_config(model)._attn_implementation
    fn = ALL_ATTENTION_FUNCTIONS[impl] if impl in ALL_ATTENTION_FUNCTIONS else None
    if fn is None or "attention_patch" not in getattr(fn, "__qualname__", ""):
        raise RuntimeError(
            f"the model's attention implementation {impl!r} is not wrapped by kvpress's attention patch, so a masking "
            "press (AdaKV) would decode with every key visible; load the model with attn_implementation='sdpa'"
        )


@torch.no_grad()
def generate_with_press(model: Any, tokenizer: Any, prompt: Any, baseline: Any, max_new_tokens: int = 64) -> GenerationResult:
    """Greedy generation with the cache compressed by a kvpress press at the end of prefill.

    Args:
        model, tokenizer: a transformers causal LM (batch 1) and its tokenizer.
        prompt: as :func:`refreekv_edu.generate` takes it (text, chat messages or token ids).
        baseline: a :class:`refreekv_edu.eval.methods.KvpressBaseline` (``press``, ``compression_ratio``).
        max_new_tokens: decode steps (fewer when an end-of-sequence id comes).

    Returns:
        :class:`~refreekv_edu.generate.GenerationResult` with an empty trace; ``stats`` hold the prompt and new
        token counts, the cache bytes before and after the press, the rows kept per layer and ``mean_budget``
        (the kept share of all layers' rows).
    """
    from transformers import DynamicCache

    press = make_press(baseline.press, baseline.compression_ratio)
    masking = baseline.press in KVPRESS_MASKING
    if masking:
        _require_masking_attention(model)
    ids = encode_prompt(tokenizer, prompt)
    device = next(model.parameters()).device
    kwarg = hf_adapter.cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    was_training = model.training
    model.eval()
    try:
        with press(model):
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{kwarg: cache})
        rows = masked_rows(model, len(ids)) if masking else [layer_rows(layer) for layer in cache.layers]
        if baseline.compression_ratio > 0 and len(ids) > 8 and rows and min(rows) >= len(ids):
            raise RuntimeError(  # a press whose hooks never ran (a transformers/kvpress mismatch) must not pass
                f"{type(press).__name__} at compression ratio {baseline.compression_ratio:.3f} left every layer's "
                f"{len(ids)} rows {'unmasked' if masking else 'in the cache'}: the press did not run inside this "
                "model's forward"
            )
        kept_bytes = sum(layer_bytes(layer) for layer in cache.layers)  # a masking press frees nothing
        full_bytes = kept_bytes if masking else sum(
            layer_bytes(layer) * len(ids) // max(1, r) for layer, r in zip(cache.layers, rows))
        step = {"position": len(ids)}

        def forward(token: int) -> np.ndarray:
            position = torch.tensor([step["position"]], dtype=torch.long, device=device)
            logits = model(input_ids=torch.tensor([[token]], dtype=torch.long, device=device), use_cache=True,
                           position_ids=position[None], cache_position=position, **{kwarg: cache}).logits
            step["position"] += 1
            return logits[0, -1].float().cpu().numpy()

        eos = eos_ids(getattr(model, "generation_config", None), tokenizer)
        last = out.logits[0, -1].float().cpu().numpy()
        tokens, first_logits = decode(forward, last, Sampler(0.0, 1.0, 0), max_new_tokens, eos)
    finally:
        if was_training:
            model.train()
        if masking:  # kvpress's patch would go on hiding these keys in this model's next decode
            for attn in _attention_modules(model):
                attn.masked_key_indices = None
    from refreekv_edu.decision import Trace

    stats = {
        "prompt_tokens": len(ids),
        "new_tokens": len(tokens),
        "kv_bytes_full": int(full_bytes),
        "kv_bytes_kept": int(kept_bytes),
        "kept_per_layer": rows,
        "mean_budget": float(np.mean(rows) / len(ids)) if rows else 1.0,
        "press": type(press).__name__,
        "compression_ratio": float(baseline.compression_ratio),
        "masked": masking,
    }
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else ""
    return GenerationResult(text=text, tokens=tokens, trace=Trace(layers=[]), stats=stats, first_logits=first_logits)
