"""The prompt as coloured text: which tokens a head keeps, evicts, or protects (pure HTML, no ipywidgets).

Every token becomes one ``<span>`` with

- a class saying its fate: ``rk-sink`` (one of the first ``m`` positions, the attention sinks: always kept),
  ``rk-kept`` (a candidate the head keeps, or any position of a full layer), ``rk-evicted`` (a candidate the
  head evicted), ``rk-window`` (the protected window, always kept), optionally ``rk-next`` (the candidate
  :class:`~refreekv_edu.widgets.StepThrough` evicts next);
- ``data-pos``, its position in the prompt;
- a ``title`` tooltip: for a candidate its ranking score and the last token's attention on it, for a sink the
  last token's attention on it and whether it counts in the metric.

Candidate ``i`` is prompt position ``m + i`` (``decision.candidate_positions()``): the sinks come first.
Every string taken from a trace (tokens, and the tooltips built from it) is HTML-escaped. The widgets put
this string in an ``ipywidgets.HTML``; tests parse it back with :func:`classes_by_position`.
"""

from __future__ import annotations

import html
import re

import numpy as np

from ..decision import LayerDecision

KEPT, EVICTED, WINDOW, NEXT, SINK = "rk-kept", "rk-evicted", "rk-window", "rk-next", "rk-sink"
#: The classes of positions a head keeps (a full layer shows every position as ``rk-kept``).
KEPT_CLASSES = frozenset({KEPT, WINDOW, SINK})

#: What the legend and tooltips say about the sinks (the default, and the ``"sinks-in-metric"`` ablation).
SINK_OUTSIDE = "sink, kept, outside the metric"
SINK_COUNTED = "sink, kept, counted in the metric"
#: What the widgets say about a layer the policy never prunes.
FULL_LAYER = "full layer: never pruned (paper, Appendix B)"

#: Inline stylesheet shipped with every rendering (JupyterLab strips nothing from an HTML widget's <style>).
STYLE = """<style>
.rk-tokens {font-family: monospace; font-size: 13px; line-height: 1.6; white-space: normal; max-height: 24em; overflow-y: auto;}
.rk-tokens span {display: inline-block; padding: 0 2px; margin: 1px; border-radius: 3px; white-space: pre;}
.rk-kept {background: #c7e9c0; color: #111;}
.rk-evicted {background: #eeeeee; color: #999; text-decoration: line-through;}
.rk-window {background: #9ecae1; color: #111; font-weight: bold;}
.rk-sink {background: #fdd0a2; color: #111; font-weight: bold; border: 1px solid #e6550d;}
.rk-next {outline: 2px solid #e6550d;}
.rk-legend span {font-family: monospace; padding: 1px 4px; margin-right: 6px; border-radius: 3px;}
</style>"""

_SPAN = re.compile(r'<span class="([^"]+)" data-pos="(\d+)"')


def sink_label(decision: LayerDecision) -> str:
    """How the sinks are shown: kept and outside the metric (the paper), or counted in it (the ablation)."""
    return SINK_COUNTED if decision.sinks_in_metric else SINK_OUTSIDE


def legend(decision: LayerDecision) -> str:
    """The legend above the tokens: only the fates this decision can give."""
    if decision.full_layer:
        items = [(KEPT, FULL_LAYER)]
    else:
        items = [(SINK, sink_label(decision))] if decision.sinks else []
        items += [(KEPT, "kept"), (EVICTED, "evicted")]
        items += [(WINDOW, "protected window")] if decision.window else []
    spans = "".join(f'<span class="{cls}">{html.escape(text)}</span>' for cls, text in items)
    return f'<div class="rk-legend">{spans}</div>'


def display_token(token: str) -> str:
    """Make a tokenizer's piece readable: byte-level space markers become spaces, newlines become ``↵``."""
    text = token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "↵").replace("\n", "↵").replace("\t", "→")
    return text if text.strip() else (text.replace(" ", "␣") or "∅")


def token_classes(decision: LayerDecision, head: int) -> list[str]:
    """The fate of every prompt position for one head: a list of ``L`` class names.

    ``rk-sink`` for ``[0, m)``, ``rk-window`` for ``[L - w, L)``, and for the candidates ``[m, L - w)``
    ``rk-kept`` or ``rk-evicted`` by ``decision.kept[head]``. A full layer keeps everything: all ``rk-kept``.
    """
    check_head(decision, head)
    length = decision.prompt_len
    if decision.full_layer:
        return [KEPT] * length
    sinks, window = decision.sinks, decision.window
    classes = [SINK] * sinks + [EVICTED] * (length - sinks - window) + [WINDOW] * window
    for pos in decision.kept[head]:
        if sinks <= pos < length - window:
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


def _owner_rows(rows: np.ndarray, decision: LayerDecision, head: int) -> np.ndarray:
    """Average the query-head rows ``(Hq, k)`` that kept-set owner ``head`` stands for: ``(k,)``."""
    group = rows.shape[0] // decision.num_heads if rows.shape[0] >= decision.num_heads else 1
    return rows[head * group : (head + 1) * group].mean(axis=0)


def head_attention(decision: LayerDecision, head: int) -> np.ndarray:
    """``(n,)`` the last token's attention on each candidate (candidate index ``i`` = position ``m + i``).

    In ``gqa="group"`` mode a KV head owns the kept set of ``G`` query heads; their attention is averaged.
    """
    a = np.asarray(decision.last_attn, dtype=np.float32)
    if a.size == 0:
        return np.zeros(decision.n_candidates, dtype=np.float32)
    return _owner_rows(a, decision, head)


def head_sink_attention(decision: LayerDecision, head: int) -> np.ndarray:
    """``(m,)`` the last token's attention on each sink, averaged like :func:`head_attention`."""
    a = np.asarray(decision.sink_attn, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != decision.sinks or a.size == 0:
        return np.zeros(decision.sinks, dtype=np.float32)
    return _owner_rows(a, decision, head)


def _tooltips(decision: LayerDecision, head: int) -> list[str]:
    """One tooltip per position (plain text; escaped when rendered)."""
    length = decision.prompt_len
    if decision.full_layer:
        return [f"pos {pos} · {FULL_LAYER}" for pos in range(length)]
    sinks, n = decision.sinks, decision.n_candidates
    scores = np.asarray(decision.scores, dtype=np.float32)
    attn, sink_attn = head_attention(decision, head), head_sink_attention(decision, head)
    has_scores = scores.ndim == 2 and scores.shape[1] == n and scores.shape[0] > head
    tips = [f"pos {p} · {sink_label(decision)} · last-token attention {sink_attn[p]:.4g}" for p in range(sinks)]
    for i in range(n):
        score = f" · score {scores[head, i]:.4g}" if has_scores else ""
        tips.append(f"pos {sinks + i} · candidate {i}{score} · last-token attention {attn[i]:.4g}")
    tips += [f"pos {p} · protected window (always kept)" for p in range(sinks + n, length)]
    return tips


def render_tokens(
    tokens: list[str],
    decision: LayerDecision,
    head: int,
    classes: list[str] | None = None,
    extra: dict[int, str] | None = None,
) -> str:
    """HTML of the prompt with each token coloured by its fate for ``head``.

    Args:
        tokens: ``L`` display strings (``decision.prompt_len`` of them); HTML-escaped here.
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
    spans = []
    for pos, (token, tip) in enumerate(zip(tokens, _tooltips(decision, head))):
        cls = html.escape(classes[pos] + (f" {extra[pos]}" if pos in extra else ""))
        spans.append(
            f'<span class="{cls}" data-pos="{pos}" title="{html.escape(tip)}">{html.escape(display_token(str(token)))}</span>'
        )
    return STYLE + legend(decision) + '<div class="rk-tokens">' + "".join(spans) + "</div>"


def classes_by_position(html_text: str) -> dict[int, set[str]]:
    """Parse :func:`render_tokens` output back to ``{position: {class names}}`` (used by tests and notebooks' checks)."""
    return {int(pos): set(cls.split()) for cls, pos in _SPAN.findall(html_text)}


def placeholder_tokens(length: int) -> list[str]:
    """``["[0]", "[1]", ...]`` for traces saved without their tokens."""
    return [f"[{i}]" for i in range(length)]
