"""kvpress presses as evaluation baselines (issue 19), on the bundled model, where kvpress is installed.

At compression ratio 0 the press path must reproduce :func:`refreekv_edu.generate`'s full-cache tokens exactly
(the same encoding, positions, greedy decoding and EOS); at the paper preset's budget every layer must really
hold fewer rows (a press that did nothing fails here), and the recorded budget is what the cache holds.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("kvpress", reason="needs the kvpress extra: pip install -e '.[torch,kvpress]'")

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.eval.config import EvalConfig, build_samples, token_counter  # noqa: E402
from refreekv_edu.eval.methods import KvpressBaseline  # noqa: E402


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer = rk.load_model("smollm2-135m", backend="torch")
    sample = build_samples(EvalConfig(tasks=["passkey"], lengths=[512], samples=1), token_counter(tokenizer))[0]
    prompt = sample.prompt if sample.chat else list(tokenizer.encode(sample.prompt))
    return model, tokenizer, prompt


def test_ratio_zero_is_the_full_cache(bundled) -> None:
    from refreekv_torch.kvpress_baselines import generate_with_press

    model, tokenizer, prompt = bundled
    full = rk.generate(model, tokenizer, prompt, rk.FullCache(), max_new_tokens=12)
    for press in ("knorm", "streamingllm"):
        same = generate_with_press(model, tokenizer, prompt, KvpressBaseline(press, 1.0), max_new_tokens=12)
        assert same.tokens == full.tokens and same.stats["mean_budget"] == 1.0


@pytest.mark.parametrize("press", ["streamingllm", "snapkv", "tova", "knorm", "expected_attention"])
def test_each_press_keeps_the_papers_share_of_rows(bundled, press: str) -> None:
    from refreekv_torch.kvpress_baselines import generate_with_press

    model, tokenizer, prompt = bundled
    paper = rk.generate(model, tokenizer, prompt, rk.ReFreeKV(), max_new_tokens=4)
    budget = paper.trace.mean_budget
    result = generate_with_press(model, tokenizer, prompt, KvpressBaseline(press, budget), max_new_tokens=4)
    length = result.stats["prompt_tokens"]
    assert length == paper.stats["prompt_tokens"] > 400
    rows = result.stats["kept_per_layer"]
    assert len(rows) == len(paper.trace.layers) and max(rows) < length
    assert all(abs(r - length * budget) <= 1 for r in rows)  # the same share of rows in every layer
    assert result.stats["mean_budget"] == pytest.approx(budget, abs=1.5 / length)
    assert result.stats["kv_bytes_kept"] / result.stats["kv_bytes_full"] == pytest.approx(
        sum(rows) / (length * len(rows)), rel=1e-6)
    assert math.isclose(result.stats["compression_ratio"], 1 - budget)


def test_adakv_masks_per_head_and_frees_nothing(bundled) -> None:
    """AdaKV picks a budget per head, so it masks keys: every layer shows the paper's share, the bytes stay full."""
    from refreekv_torch.kvpress_baselines import generate_with_press

    from refreekv_edu.eval.methods import KVPRESS_MASKING

    model, tokenizer, prompt = bundled
    assert KVPRESS_MASKING == ("adakv",)
    full = rk.generate(model, tokenizer, prompt, rk.FullCache(), max_new_tokens=8)
    paper = rk.generate(model, tokenizer, prompt, rk.ReFreeKV(), max_new_tokens=4)
    budget = paper.trace.mean_budget
    result = generate_with_press(model, tokenizer, prompt, KvpressBaseline("adakv", budget), max_new_tokens=4)
    length = result.stats["prompt_tokens"]
    rows = result.stats["kept_per_layer"]
    assert len(rows) == len(paper.trace.layers) and all(abs(r - length * budget) <= 1 for r in rows)
    assert result.stats["masked"] and result.stats["kv_bytes_kept"] == result.stats["kv_bytes_full"]
    assert result.stats["mean_budget"] == pytest.approx(budget, abs=1.5 / length)
    assert all(getattr(layer.self_attn, "masked_key_indices", None) is None for layer in model.model.layers)
    # The masks are applied while decoding: at 5% the answer changes; at ratio 0 it is the full cache's.
    tiny = generate_with_press(model, tokenizer, prompt, KvpressBaseline("adakv", 0.05), max_new_tokens=8)
    assert tiny.tokens != full.tokens
    same = generate_with_press(model, tokenizer, prompt, KvpressBaseline("adakv", 1.0), max_new_tokens=8)
    assert same.tokens == full.tokens


def test_adakv_refuses_an_attention_kvpress_did_not_patch(bundled) -> None:
    from refreekv_torch.kvpress_baselines import generate_with_press

    model, tokenizer, prompt = bundled
    model.set_attn_implementation("eager")  # the model's own eager function: kvpress never wrapped it
    try:
        with pytest.raises(RuntimeError, match="not wrapped by kvpress's attention patch"):
            generate_with_press(model, tokenizer, prompt, KvpressBaseline("adakv", 0.5), max_new_tokens=2)
    finally:
        model.set_attn_implementation("sdpa")
