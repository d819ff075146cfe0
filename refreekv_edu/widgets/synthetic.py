"""A realistic synthetic :class:`~refreekv_edu.decision.Trace`, made with the numpy reference, no model needed.

Real attention has a few recognisable shapes, and this module plants them in random
queries and keys so the widgets have something worth looking at:

- an *attention sink*: position 0 receives a lot of attention in every head (the paper's preset keeps the
  first 4 positions as sinks and leaves them out of the metric; the ``"sinks-in-metric"`` ablation does not);
- a handful of *salient* tokens (here the digits of a passkey) that the last
  queries look up, more sharply in some layers than in others;
- background noise everywhere else.

Layers differ in how sharp that lookup is (``sharpness``), so ReFreeKV gives them
different budgets, which is the point the widgets teach. The default policy is the paper's preset,
``ReFreeKV()``, so layers 0 and 1 are full layers (never pruned, budget 100%). The decisions themselves come
from :meth:`refreekv_edu.policies.Policy.decide_layer` on the numpy backend, so a
synthetic trace is exactly what the real algorithm does on these inputs.
"""

from __future__ import annotations

import numpy as np

from ..decision import Trace
from ..policies import Policy, ReFreeKV

#: Words the default prompt is made of; the digits after "passkey is" are the salient tokens.
_FILLER = ("The grass is green . The sky is blue . The sun is yellow . Here we go . There and back again .").split()
_PASSKEY = ["The", "pass", "key", "is", "7", "4", "1", "9", "."]
_QUESTION = ["What", "is", "the", "pass", "key", "?", "The", "pass", "key", "is"]


def default_tokens(prompt_len: int) -> tuple[list[str], list[int]]:
    """A passkey-retrieval-like prompt of ``prompt_len`` tokens and the positions of its salient tokens.

    Returns:
        ``(tokens, salient)``: ``tokens`` has length ``prompt_len``; ``salient`` lists the positions of
        the passkey digits (empty when the prompt is too short to hold the passkey).
    """
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
    tail = _QUESTION if prompt_len >= len(_QUESTION) + len(_PASSKEY) + 2 else []
    body_len = prompt_len - len(tail)
    body = [_FILLER[i % len(_FILLER)] for i in range(body_len)]
    salient: list[int] = []
    if body_len >= len(_PASSKEY) + 2:
        start = body_len // 3  # the needle sits a third of the way in
        body[start : start + len(_PASSKEY)] = _PASSKEY
        salient = [start + i for i, tok in enumerate(_PASSKEY) if tok.isdigit()]
    return body + tail, salient


def synthetic_trace(
    num_layers: int = 6,
    prompt_len: int = 48,
    num_q_heads: int = 6,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    policy: Policy | None = None,
    seed: int = 0,
    tokens: list[str] | None = None,
) -> Trace:
    """Decide every layer of a made-up model with the numpy reference and return the :class:`Trace`.

    Args:
        num_layers: how many layers to decide.
        prompt_len: ``L``.
        num_q_heads: ``Hq``; must be a multiple of ``num_kv_heads`` (GQA groups).
        num_kv_heads: ``Hkv``.
        head_dim: ``D``.
        policy: the policy to run (default ``ReFreeKV()``, the paper's preset: 4 sinks, recency, T = 0.01,
            layers 0 and 1 full); any preset (``ReFreeKV.preset("official-script")``) or baseline works.
        seed: random seed; the same arguments give the same trace.
        tokens: display strings of the prompt (length ``L``); default: a passkey prompt from :func:`default_tokens`.

    Returns:
        A :class:`Trace` with ``num_layers`` decisions, ``tokens`` of length ``L`` and ``meta`` describing
        how it was made (``meta["salient"]`` holds the planted salient positions).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
    policy = ReFreeKV() if policy is None else policy
    default, salient = default_tokens(prompt_len)
    if tokens is None:
        tokens = default
    elif len(tokens) != prompt_len:
        raise ValueError(
            f"tokens has {len(tokens)} entries but prompt_len is {prompt_len}; pass one string per position"
        )

    rng = np.random.default_rng(seed)
    rows = max(1, min(policy.query_rows, prompt_len))  # the last queries the policy reads (1 for recency)
    # Sharpness grows with depth but not monotonically, so budgets differ from layer to layer.
    sharpness = np.linspace(0.5, 2.5, num_layers)
    sharpness = sharpness[rng.permutation(num_layers)] if num_layers > 2 else sharpness
    layers = []
    for layer in range(num_layers):
        keys = rng.normal(size=(num_kv_heads, prompt_len, head_dim)).astype(np.float32)
        queries = rng.normal(size=(num_q_heads, rows, head_dim)).astype(np.float32)
        # One "lookup" direction per KV head; its query heads share it, with per-head strength.
        direction = rng.normal(size=(num_kv_heads, head_dim)).astype(np.float32)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        group = num_q_heads // num_kv_heads
        strength = sharpness[layer] * rng.uniform(0.6, 1.4, size=num_q_heads).astype(np.float32)
        queries += (strength[:, None, None] * np.repeat(direction, group, axis=0)[:, None, :]) * np.sqrt(head_dim)
        # Keys get no random component along the lookup direction, then a planted one: the sink and the
        # salient tokens stand out by a margin that `strength` turns into attention logits.
        keys -= np.einsum("hld,hd->hl", keys, direction)[:, :, None] * direction[:, None, :]
        keys[:, 0, :] += 2.5 * direction  # the sink
        if salient:
            keys[:, salient, :] += 2.0 * direction[:, None, :]
        layers.append(policy.decide_layer(queries, keys, layer=layer))
    meta = {
        "source": "synthetic (refreekv_edu.widgets.synthetic.synthetic_trace)",
        "policy": repr(policy),
        "preset": getattr(policy, "preset_name", None),
        "seed": seed,
        "num_q_heads": num_q_heads,
        "num_kv_heads": num_kv_heads,
        "salient": salient,
    }
    return Trace(layers=layers, tokens=list(tokens), meta=meta)


__all__ = ["default_tokens", "synthetic_trace"]
