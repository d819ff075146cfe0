"""The coloured-prompt HTML: every token's class matches the decision, checked position by position."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.make_trace import make_trace

import refreekv_edu as rk
from refreekv_edu.policies import PRESETS
from refreekv_edu.widgets.token_view import (
    EVICTED,
    KEPT,
    NEXT,
    SINK,
    WINDOW,
    classes_by_position,
    display_token,
    head_attention,
    head_sink_attention,
    render_tokens,
    token_classes,
)


def brute_classes(decision, head):
    """The definition: a full layer keeps all; else sinks [0, m), window [L - w, L), the rest kept or evicted."""
    length, window, sinks = decision.prompt_len, decision.window, decision.sinks
    if decision.full_layer:
        return [KEPT] * length
    kept = set(int(p) for p in decision.kept[head])
    return [
        SINK if p < sinks else WINDOW if p >= length - window else KEPT if p in kept else EVICTED
        for p in range(length)
    ]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_token_classes_match_definition_for_every_layer_and_head(preset):
    trace = make_trace(policy=rk.ReFreeKV.preset(preset))
    for d in trace.layers:
        for h in range(d.num_heads):
            assert token_classes(d, h) == brute_classes(d, h)
    # The fixture is only a useful test if some tokens are kept and some evicted.
    classes = token_classes(trace.layers[3], 0)
    assert classes.count(KEPT) > 0 and classes.count(EVICTED) > 0
    assert classes.count(SINK) == PRESETS[preset]["sinks"] and classes.count(WINDOW) == PRESETS[preset]["window"]


def test_render_tokens_html_round_trips_classes_and_tooltips():
    trace = make_trace(policy=rk.ReFreeKV.preset("h2o-ranking"))  # sinks, candidates and a window
    d = trace.layers[4]
    html_text = render_tokens(trace.tokens, d, head=1, extra={6: NEXT})
    parsed = classes_by_position(html_text)
    assert sorted(parsed) == list(range(d.prompt_len))
    for pos, cls in enumerate(brute_classes(d, 1)):
        expected = {cls, NEXT} if pos == 6 else {cls}
        assert parsed[pos] == expected, pos
    # Position 9 is candidate 5 (4 sinks first): its tooltip shows head 1's score of candidate index 5.
    assert f'data-pos="9" title="pos 9 · candidate 5 · score {d.scores[1, 5]:.4g}' in html_text
    assert f'last-token attention {head_attention(d, 1)[5]:.4g}"' in html_text
    sink = head_sink_attention(d, 1)[2]
    assert f'data-pos="2" title="pos 2 · sink, kept, outside the metric · last-token attention {sink:.4g}"' in html_text
    assert 'title="pos 47 · protected window (always kept)"' in html_text
    assert '<span class="rk-sink">sink, kept, outside the metric</span>' in html_text  # the legend


def test_full_layer_and_sinks_in_metric_legends(trace):
    full = render_tokens(trace.tokens, trace.layers[0], head=0)
    assert '<span class="rk-kept">full layer: never pruned (paper, Appendix B)</span>' in full
    assert "pos 3 · full layer: never pruned (paper, Appendix B)" in full
    ablation = make_trace(policy=rk.ReFreeKV.preset("sinks-in-metric")).layers[3]
    text = render_tokens(trace.tokens, ablation, head=0)
    assert '<span class="rk-sink">sink, kept, counted in the metric</span>' in text
    assert "pos 0 · sink, kept, counted in the metric" in text


def test_tokens_are_escaped_and_made_readable(trace):
    d = trace.layers[0]
    tokens = list(trace.tokens)
    tokens[2] = "<b>x&y</b>"
    tokens[3] = "Ġhello"
    tokens[4] = "\n"
    html_text = render_tokens(tokens, d, head=0)
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;" in html_text and "<b>x" not in html_text
    assert display_token("Ġhello") == " hello"
    assert display_token("\n") == "↵"
    assert display_token(" ") == "␣"


def test_head_attention_averages_the_query_heads_of_a_kv_head(trace):
    d = trace.layers[3]
    assert d.group_size == 3 and d.last_attn.shape[0] == 6
    np.testing.assert_allclose(head_attention(d, 1), d.last_attn[3:6].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(head_sink_attention(d, 1), d.sink_attn[3:6].mean(axis=0), rtol=1e-6)


def test_bad_input_says_what_is_wrong(trace):
    d = trace.layers[0]
    with pytest.raises(ValueError, match="got 3 tokens for a decision over a prompt of 48"):
        render_tokens(["a", "b", "c"], d, head=0)
    with pytest.raises(ValueError, match="head 2 does not exist"):
        token_classes(d, 2)
