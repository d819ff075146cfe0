"""The prompt as coloured text: which tokens a head keeps, evicts, or protects (pure HTML, no ipywidgets).

Every token becomes one ``<span>`` with

- a class saying its fate: ``rk-kept`` (a candidate the head keeps), ``rk-evicted`` (a candidate the head
  evicted), ``rk-window`` (the protected observation window, always kept), optionally ``rk-next``
  (the candidate :class:`~refreekv_edu.widgets.StepThrough` evicts next);
- ``data-pos``, its position in the prompt;
- a ``title`` tooltip with its ranking score and the last token's attention on it.

The widgets put this string in an ``ipywidgets.HTML``; tests parse it back with :func:`classes_by_position`.
"""

from __future__ import annotations

import html
import re

import numpy as np

from ..decision import LayerDecision

KEPT, EVICTED, WINDOW, NEXT = "rk-kept", "rk-evicted", "rk-window", "rk-next"

#: Inline stylesheet shipped with every rendering (JupyterLab strips nothing from an HTML widget's <style>).
STYLE = """<style>
.rk-tokens {font-family: monospace; font-size: 13px; line-height: 1.6; white-space: normal; max-height: 24em; overflow-y: auto;}
.rk-tokens span {display: inline-block; padding: 0 2px; margin: 1px; border-radius: 3px; white-space: pre;}
.rk-kept {background: #c7e9c0; color: #111;}
.rk-evicted {background: #eeeeee; color: #999; text-decoration: line-through;}
.rk-window {background: #9ecae1; color: #111; font-weight: bold;}
.rk-next {outline: 2px solid #e6550d;}
.rk-legend span {font-family: monospace; padding: 1px 4px; margin-right: 6px; border-radius: 3px;}
</style>"""

LEGEND = (
    '<div class="rk-legend"><span class="rk-kept">kept</span><span class="rk-evicted">evicted</span>'
    '<span class="rk-window">protected window</span></div>'
)

_SPAN = re.compile(r'<span class="([^"]+)" data-pos="(\d+)"')


def display_token(token: str) -> str:
    """Make a tokenizer's piece readable: byte-level space markers become spaces, newlines become ``↵``."""
    text = token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "↵").replace("\n", "↵").replace("\t", "→")
    return text if text.strip() else (text.replace(" ", "␣") or "∅")


def token_classes(decision: LayerDecision, head: int) -> list[str]:
    """The fate of every prompt position for one head: a list of ``L`` class names (``rk-kept`` / ``rk-evicted`` / ``rk-window``)."""
    check_head(decision, head)
    length, n = decision.prompt_len, decision.n_candidates
    classes = [EVICTED] * n + [WINDOW] * (length - n)
    for pos in decision.kept[head]:
        if pos < n:
            classes[int(pos)] = KEPT
    return classes


def check_head(decision: LayerDecision, head: int) -> int:
    """Return ``head`` if the decision has it, else raise a ValueError naming the valid range."""
    if not 0 <= head < decision.num_heads:
        raise ValueError(
            f"head {head} does not exist in layer {decision.layer}: its decision has {decision.num_heads} heads "
            f"(0..{decision.num_heads - 1}; KV heads for gqa='group', query heads for gqa='expand')"
        )
    return head


def head_attention(decision: LayerDecision, head: int) -> np.ndarray:
    """``(n,)`` the last token's attention on each candidate, for kept-set owner ``head``.

    In ``gqa="group"`` mode a KV head owns the kept set of ``G`` query heads; their attention is averaged.
    """
    a = np.asarray(decision.last_attn, dtype=np.float32)
    if a.size == 0:
        return np.zeros(decision.n_candidates, dtype=np.float32)
    group = a.shape[0] // decision.num_heads if a.shape[0] >= decision.num_heads else 1
    return a[head * group : (head + 1) * group].mean(axis=0)


def render_tokens(
    tokens: list[str],
    decision: LayerDecision,
    head: int,
    classes: list[str] | None = None,
    extra: dict[int, str] | None = None,
) -> str:
    """HTML of the prompt with each token coloured by its fate for ``head``.

    Args:
        tokens: ``L`` display strings (``decision.prompt_len`` of them).
        decision: the layer's decision.
        head: the kept-set owner to show (KV head for ``gqa="group"``).
        classes: override the fate of each position (``L`` class names); default :func:`token_classes`.
        extra: position -> extra class (e.g. ``{pos: "rk-next"}``).

    Returns:
        An HTML string: the stylesheet, a legend and one ``<span>`` per token inside ``<div class="rk-tokens">``.
    """
    if len(tokens) != decision.prompt_len:
        raise ValueError(
            f"got {len(tokens)} tokens for a decision over a prompt of {decision.prompt_len} positions; "
            "pass the trace's tokens (Trace.tokens) or leave them out to show positions"
        )
    classes = token_classes(decision, head) if classes is None else classes
    extra = extra or {}
    n = decision.n_candidates
    scores = np.asarray(decision.scores, dtype=np.float32)
    attn = head_attention(decision, head)
    spans = []
    for pos, token in enumerate(tokens):
        if pos < n:
            tip = f"pos {pos} · score {scores[head, pos]:.4g} · last-token attention {attn[pos]:.4g}"
        else:
            tip = f"pos {pos} · protected window (always kept)"
        cls = classes[pos] + (f" {extra[pos]}" if pos in extra else "")
        spans.append(
            f'<span class="{cls}" data-pos="{pos}" title="{html.escape(tip)}">{html.escape(display_token(token))}</span>'
        )
    return STYLE + LEGEND + '<div class="rk-tokens">' + "".join(spans) + "</div>"


def classes_by_position(html_text: str) -> dict[int, set[str]]:
    """Parse :func:`render_tokens` output back to ``{position: {class names}}`` (used by tests and notebooks' checks)."""
    return {int(pos): set(cls.split()) for cls, pos in _SPAN.findall(html_text)}


def placeholder_tokens(length: int) -> list[str]:
    """``["[0]", "[1]", ...]`` for traces saved without their tokens."""
    return [f"[{i}]" for i in range(length)]
