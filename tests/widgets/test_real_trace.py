"""The widgets on a trace from the bundled model (torch backend): real tokens, 30 layers, GQA 9/3 heads.

Slow (loads SmolLM2-135M on the CPU, about 1-2 minutes on 2 cores). Besides showing that the widgets
accept a real trace of the paper's preset (layers 0-1 full, 4 sinks, recency), it checks the trace itself:
re-deciding every layer from its stored ``order``, ``last_attn`` and ``sink_attn`` at the trace's own
threshold must give back exactly the budgets the model ran with.
"""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk

pytestmark = pytest.mark.slow

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")

from refreekv_edu.widgets import DecisionExplorer, StepThrough, budgets_at_threshold, classes_by_position  # noqa: E402
from refreekv_edu.widgets.token_view import KEPT_CLASSES  # noqa: E402

PROMPT = (
    "The grass is green. The sky is blue. " * 4
    + "The pass key is 7419. Remember it. "
    + "The sun is yellow. Here we go. " * 4
    + "What is the pass key? The pass key is"
)


@pytest.fixture(scope="module")
def trace():
    try:
        model, tokenizer = rk.load_model("smollm2-135m", backend="torch")
    except Exception as exc:  # noqa: BLE001 - no torch / transformers / model here: say which
        pytest.skip(f"the torch backend cannot load the bundled model here: {type(exc).__name__}: {exc}")
    return rk.generate(model, tokenizer, PROMPT, policy=rk.ReFreeKV(), max_new_tokens=1).trace


def test_real_trace_redecides_to_its_own_budgets(trace):
    assert len(trace.layers) == 30 and len(trace.tokens) == trace.layers[0].prompt_len
    assert [d.full_layer for d in trace.layers[:3]] == [True, True, False]
    cuts, budgets = budgets_at_threshold(trace, trace.layers[2].threshold)
    np.testing.assert_array_equal(cuts, [d.n_evicted for d in trace.layers])
    np.testing.assert_allclose(budgets, trace.budgets)


def test_widgets_show_the_real_decisions(trace):
    ex = DecisionExplorer(trace)
    assert len(ex.head_dropdown.options) == 3  # SmolLM2: 3 KV heads (gqa="group")
    for layer in (0, 15, 29):
        ex.layer = layer
        for head in range(3):
            ex.head = head
            parsed = classes_by_position(ex.tokens_html)
            shown = sorted(p for p, c in parsed.items() if c & KEPT_CLASSES)
            assert shown == trace.layers[layer].kept[head].tolist()
            assert sorted(p for p, c in parsed.items() if "rk-sink" in c) == ([] if layer == 0 else [0, 1, 2, 3])
    st = StepThrough(trace.layers[15], tokens=trace.tokens)
    assert st.cut == trace.layers[15].n_evicted
