"""``ReFreeKVPress`` inside kvpress (issue 19), on the bundled model, where kvpress is installed.

The press must really prune (the cache holds fewer rows: a press that does nothing fails), decide exactly what the
package's own integration decides on the same prefill, decode through the pruned layers with correct masks and
positions (``model.generate`` under the press gives ``rk.generate``'s tokens), compose with kvpress's presses, and
report its compression ratio only once it has one.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("kvpress", reason="needs the kvpress extra: pip install -e '.[torch,kvpress]'")

import torch  # noqa: E402
from kvpress import ComposedPress, KnormPress  # noqa: E402
from refreekv_torch.kvpress_press import ReFreeKVPress  # noqa: E402
from transformers import DynamicCache, pipeline  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.eval.config import EvalConfig, build_samples, token_counter  # noqa: E402


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer = rk.load_model("smollm2-135m", backend="torch")
    sample = build_samples(EvalConfig(tasks=["passkey"], lengths=[512], samples=1), token_counter(tokenizer))[0]
    context, question = sample.prompt.rsplit("\n\n", 1)
    yield model, tokenizer, context, question
    ReFreeKVPress().restore_attention()


def _prefill_under(press, model, ids):
    cache = DynamicCache()
    with press(model):
        model.model(input_ids=torch.tensor([ids]), past_key_values=cache)  # what kvpress's pipeline runs
    return cache


def test_the_press_prunes_and_decides_what_the_package_decides(bundled) -> None:
    model, tokenizer, context, _ = bundled
    ids = list(tokenizer.encode(context))
    press = ReFreeKVPress()
    assert press.compression_ratio is None and press.trace.layers == []  # nothing before a prefill
    cache = _prefill_under(press, model, ids)
    rows = [layer.keys.shape[2] for layer in cache.layers]
    assert rows[0] == rows[1] == len(ids) and min(rows) < len(ids)  # layers 0-1 whole, the others pruned
    ours = rk.generate(model, tokenizer, ids, rk.ReFreeKV(), max_new_tokens=1).trace
    assert [d.n_kept for d in press.trace.layers] == [d.n_kept for d in ours.layers] == rows
    for mine, theirs in zip(press.trace.layers, ours.layers):
        assert np.array_equal(mine.kept, theirs.kept)
    assert press.compression_ratio == pytest.approx(1 - sum(rows) / (len(ids) * len(rows)))
    with pytest.raises(AttributeError, match="read-only"):
        press.compression_ratio = 0.5
    press.restore_attention()


def test_model_generate_under_the_press_gives_the_packages_tokens(bundled) -> None:
    model, tokenizer, context, question = bundled
    messages = [{"role": "user", "content": context + "\n\n" + question}]
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    expected = rk.generate(model, tokenizer, ids, rk.ReFreeKV(), max_new_tokens=12).tokens
    press = ReFreeKVPress()
    with press(model):
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, past_key_values=DynamicCache())
    press.restore_attention()
    assert len(expected) > 4 and out[0, len(ids):].tolist() == expected  # pruned layers decode with their own masks
    assert 0 < press.compression_ratio < 1


def test_the_pipeline_with_the_press_holds_fewer_rows(bundled) -> None:
    model, tokenizer, context, question = bundled
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    press = ReFreeKVPress()
    cache = DynamicCache()
    answer = pipe(context, question=question, press=press, cache=cache, max_new_tokens=8)["answer"]
    press.restore_attention()
    rows = [layer.keys.shape[2] for layer in cache.layers]
    assert isinstance(answer, str) and answer
    assert rows == [d.n_kept for d in press.trace.layers] and min(rows) < max(rows)
    assert press.compression_ratio > 0


def test_composed_with_a_kvpress_press(bundled) -> None:
    model, tokenizer, context, _ = bundled
    ids = list(tokenizer.encode(context))
    alone = ReFreeKVPress()
    rows_alone = [layer.keys.shape[2] for layer in _prefill_under(alone, model, ids).layers]
    composed = ComposedPress([ReFreeKVPress(), KnormPress(compression_ratio=0.25)])
    rows = [layer.keys.shape[2] for layer in _prefill_under(composed, model, ids).layers]
    alone.restore_attention()
    assert rows == [int(r * 0.75) for r in rows_alone]  # Knorm takes a quarter of what ReFreeKV kept, per layer
    assert composed.compression_ratio == pytest.approx(1 - (1 - alone.compression_ratio) * 0.75, abs=0.02)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="gqa='group'"):
        ReFreeKVPress(rk.ReFreeKV(gqa="expand"))
    with pytest.raises(TypeError, match="refreekv policy"):
        ReFreeKVPress("paper")
