"""The transformers integration on tiny random models of every supported family.

What is checked, and why it proves the integration right:

1. FullCache / FixedBudget(1.0) decode token-identically to ``model.generate`` (nothing is lost by the
   capture hooks, the compaction path or the attention wrapper).
2. With real pruning, every decode step's logits equal those of a *full* cache in which the evicted
   keys are masked out per layer and per KV head (a custom attention function). This proves the
   gather, the positions (RoPE continues at the prompt length) and the per-layer masks together.
3. The cache really shrinks: per-layer tensors have ``(1, Hkv, n_kept, D)`` and the bytes follow.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refreekv_torch import generation, hf_adapter, hf_compress  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DynamicCache,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import refreekv_edu as rk  # noqa: E402

PROMPT_LEN = 48
FAMILIES = {
    "llama": (LlamaConfig, {}),
    "mistral": (MistralConfig, {"sliding_window": None}),  # like Mistral-7B v0.2+: full attention
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {}),
    # layer 0 slides over 16 tokens (left alone), layer 1 is global (compressed)
    "gemma3": (Gemma3TextConfig, {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16}),
}


def tiny_model(family: str, attn: str = "sdpa", heads: int = 4, kv_heads: int = 2, seed: int = 0):
    config_cls, extra = FAMILIES[family]
    config = config_cls(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=16,
        vocab_size=128,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    model.generation_config.eos_token_id = None  # decode exactly max_new_tokens in both paths
    model.generation_config.pad_token_id = 0
    return model


def prompt_ids(length: int = PROMPT_LEN, seed: int = 1) -> list[int]:
    return torch.randint(1, 128, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


# -------------------------------------------------------------------------------- (1) exact equality
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", [rk.FullCache(), rk.FixedBudget(budget=1.0)], ids=["full", "fixed1.0"])
def test_uncompressed_policies_match_model_generate(family, policy):
    model = tiny_model(family)
    ids = prompt_ids()
    expected = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids) :].tolist()
    result = generation.generate(model, None, ids, policy, max_new_tokens=32)
    assert result.tokens == expected
    assert result.stats["kv_bytes_kept"] == result.stats["kv_bytes_full"]
    assert model.config._attn_implementation == "sdpa"  # restored


# -------------------------------------------------------------------------------- (2) masked reference
def _register_evicted_mask_attention(evicted: dict[int, torch.Tensor], groups: int) -> str:
    """Eager attention over the FULL cache that hides, per layer and KV head, the positions a decision evicted."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        assert query.shape[-2] == 1, "this reference only decodes one token at a time"
        mask = None
        if module.layer_idx in evicted:
            hidden = evicted[module.layer_idx]  # (Hkv, L) bool
            hidden = hidden.repeat_interleave(groups, dim=0)  # (Hq, L): a query head sees its KV head's rows
            bias = torch.zeros(query.shape[1], key.shape[-2], dtype=query.dtype)
            bias[:, : hidden.shape[1]] = bias[:, : hidden.shape[1]].masked_fill(hidden, float("-inf"))
            mask = bias[None, :, None, :]  # (1, Hq, 1, kv)
        return eager(module, query, key, value, mask, **kwargs)

    name = "test_refreekv_evicted_mask"
    ALL_ATTENTION_FUNCTIONS.register(name, attention)
    return name


def _decode_logits(model, cache, tokens):
    out = []
    for token in tokens:
        logits = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True).logits[0, -1]
        out.append(logits.float())
    return torch.stack(out)


@pytest.mark.parametrize(
    ("family", "policy", "attn"),
    [
        ("llama", rk.ReFreeKV(threshold=0.3), "sdpa"),
        ("llama", rk.FixedBudget(budget=0.5, ranking="snapkv"), "eager"),
        ("mistral", rk.FixedBudget(budget=0.5), "sdpa"),
        ("qwen2", rk.ReFreeKV(threshold=0.3), "sdpa"),
        ("qwen3", rk.FixedBudget(budget=0.4), "sdpa"),
        ("gemma3", rk.ReFreeKV(threshold=0.3), "sdpa"),
        ("gemma3", rk.FixedBudget(budget=0.5, ranking="position"), "eager"),
    ],
)
def test_pruned_decode_equals_full_cache_with_evicted_keys_masked(family, policy, attn):
    model = tiny_model(family, attn=attn)
    ids = prompt_ids()
    follow = prompt_ids(8, seed=7)  # the tokens both runs decode (teacher forcing)

    with torch.no_grad():
        press = hf_compress.Compressor(model, policy, auto=False)
        with press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            trace = press.compact(cache)
            pruned = _decode_logits(model, cache, follow)
        assert any(d.n_evicted > 0 for d in trace.layers), "the test needs real evictions"

        full_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), cache=full_cache, use_cache=True)
        evicted = {d.layer: torch.as_tensor(d.evicted_mask()) for d in trace.layers}
        saved = model.config._attn_implementation
        groups = model.config.num_attention_heads // model.config.num_key_value_heads
        model.config._attn_implementation = _register_evicted_mask_attention(evicted, groups)
        try:
            reference = _decode_logits(model, full_cache, follow)
        finally:
            model.config._attn_implementation = saved

        plain_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), cache=plain_cache, use_cache=True)
        full = _decode_logits(model, plain_cache, follow)

    torch.testing.assert_close(pruned, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(pruned, full, atol=1e-4), (
        "pruning should change the logits (else the test proves nothing)"
    )


# -------------------------------------------------------------------------------- (3) memory really freed
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_tensors_have_kept_sizes(family):
    model = tiny_model(family)
    ids = prompt_ids()
    info = hf_adapter.attention_layers(model)
    with torch.no_grad():
        full = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), cache=full, use_cache=True)
        press = hf_compress.Compressor(model, rk.FixedBudget(budget=0.5), auto=False)
        with press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            trace = press.compact(cache)

    decided = {d.layer: d for d in trace.layers}
    assert set(decided) == {i.index for i in info if not i.is_sliding}
    expected_bytes = 0
    for layer_info in info:
        layer = cache.layers[layer_info.index]
        if layer_info.is_sliding:  # untouched: same tensors as a plain prefill
            assert not isinstance(layer, hf_compress.PrunedLayer)
            torch.testing.assert_close(layer.keys, full.layers[layer_info.index].keys, rtol=0, atol=0)
            expected_bytes += hf_compress.layer_bytes(layer)
            continue
        d = decided[layer_info.index]
        hkv, dim = layer_info.num_kv_heads, layer_info.head_dim
        assert d.kept.shape == (hkv, d.n_kept)  # gqa="group": one kept set per KV head
        assert d.n_kept == int(np.ceil(0.5 * len(ids)))
        assert isinstance(layer, hf_compress.PrunedLayer)
        assert tuple(layer.keys.shape) == (1, hkv, d.n_kept, dim)
        assert tuple(layer.values.shape) == (1, hkv, d.n_kept, dim)
        assert hf_compress.layer_bytes(layer) == 2 * hkv * d.n_kept * dim * 4  # float32, Hkv heads only
        expected_bytes += hf_compress.layer_bytes(layer)
        # the kept rows are the original rows, head by head
        original = full.layers[layer_info.index]
        for h in range(hkv):
            rows = torch.as_tensor(d.kept[h])
            torch.testing.assert_close(layer.keys[0, h], original.keys[0, h, rows], rtol=0, atol=0)
            torch.testing.assert_close(layer.values[0, h], original.values[0, h, rows], rtol=0, atol=0)
    assert press.stats.kv_bytes_kept == expected_bytes
    assert press.stats.kv_bytes_kept < press.stats.kv_bytes_full
    assert press.stats.kept_per_layer == [hf_compress.layer_rows(layer) for layer in cache.layers]


def test_positions_continue_at_prompt_length():
    model = tiny_model("llama")
    ids = prompt_ids()
    with torch.no_grad(), hf_compress.Compressor(model, rk.FixedBudget(budget=0.25), auto=False) as press:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        press.compact(cache)
        rows = cache.layers[0].num_rows
        assert rows == 12 and cache.get_seq_length() == len(ids)  # 12 rows held, 48 tokens seen
        model(input_ids=torch.tensor([[5]]), cache=cache, use_cache=True)
        assert cache.layers[0].num_rows == rows + 1 and cache.get_seq_length() == len(ids) + 1
        # what RoPE receives: transformers computes position_ids from get_seq_length()
        seen = {}
        hook = model.model.rotary_emb.register_forward_hook(
            lambda m, a, kw, out: seen.update(pos=kw["position_ids"]), with_kwargs=True
        )
        model(input_ids=torch.tensor([[6]]), cache=cache, use_cache=True)
        hook.remove()
    assert seen["pos"].tolist() == [[len(ids) + 1]]


def test_hf_generate_inside_compress_matches_our_generate():
    model = tiny_model("qwen3")
    ids = prompt_ids()
    policy = rk.ReFreeKV(threshold=0.3)
    ours = generation.generate(model, None, ids, policy, max_new_tokens=16)
    with hf_compress.compress(model, policy) as press:
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :].tolist()
        assert model.config._attn_implementation == "refreekv_sdpa"
    assert model.config._attn_implementation == "sdpa"
    assert theirs == ours.tokens
    assert press.trace.budgets.tolist() == ours.trace.budgets.tolist()
    assert ours.stats["kv_bytes_kept"] < ours.stats["kv_bytes_full"]


def test_top_level_generate_dispatches_and_fills_stats():
    model = tiny_model("llama")
    result = rk.generate(model, None, prompt_ids(), policy=rk.ReFreeKV(threshold=0.3), max_new_tokens=4)
    assert isinstance(result, rk.GenerationResult)
    from refreekv_edu.generate import STATS_KEYS

    assert set(STATS_KEYS) <= set(result.stats)
    assert result.stats["prompt_tokens"] == PROMPT_LEN and result.stats["new_tokens"] == 4
    assert result.first_logits.shape == (128,) and result.first_logits.dtype == np.float32
    assert len(result.trace.layers) == 2 and result.trace.layers[0].prompt_len == PROMPT_LEN
    assert 0 < result.kv_kept_fraction < 1


def test_sampling_is_seeded():
    model = tiny_model("llama")
    ids = prompt_ids()
    runs = [
        generation.generate(model, None, ids, rk.ReFreeKV(), max_new_tokens=12, temperature=1.0, seed=s)
        for s in (3, 3, 4)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].tokens != runs[2].tokens


# -------------------------------------------------------------------------------- errors
def test_expand_mode_refuses_gqa_cache_but_works_without_gqa():
    with pytest.raises(ValueError, match="gqa='group'"):
        hf_compress.Compressor(tiny_model("llama"), rk.ReFreeKV(gqa="expand"))
    model = tiny_model("llama", heads=4, kv_heads=4)  # MHA: one KV head per query head
    result = generation.generate(model, None, prompt_ids(), rk.FixedBudget(budget=0.5, gqa="expand"), max_new_tokens=2)
    assert result.trace.layers[0].kept.shape == (4, PROMPT_LEN // 2)


def test_clear_errors():
    with pytest.raises(hf_adapter.UnsupportedModelError, match="supported: llama"):
        hf_compress.Compressor(
            AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)), rk.ReFreeKV()
        )
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="batch 1"), hf_compress.compress(model, rk.ReFreeKV()):
        model(input_ids=torch.ones(2, 16, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match="padded"), hf_compress.compress(model, rk.ReFreeKV()):
        model(
            input_ids=torch.ones(1, 16, dtype=torch.long),
            attention_mask=torch.tensor([[0] * 2 + [1] * 14]),
            use_cache=True,
        )
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        hf_compress.Compressor(model, rk.ReFreeKV())


@pytest.mark.parametrize(
    ("family", "attn"), [("llama", "sdpa"), ("llama", "eager"), ("gemma3", "sdpa"), ("gemma3", "eager")]
)
def test_multi_token_step_after_compaction_equals_single_steps(family, attn):
    """Layers hold different row counts; a 4-token forward must still mask each layer right (bottom-right causal)."""
    model = tiny_model(family, attn=attn)
    ids, follow = prompt_ids(), prompt_ids(4, seed=9)
    logits = []
    for chunked in (False, True):
        with torch.no_grad(), hf_compress.Compressor(model, rk.ReFreeKV(threshold=0.3), auto=False) as press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            press.compact(cache)
            if chunked:
                logits.append(model(input_ids=torch.tensor([follow]), cache=cache, use_cache=True).logits[0].float())
            else:
                logits.append(_decode_logits(model, cache, follow))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


def test_sliding_window_only_model_is_left_alone():
    """Mistral with sliding_window set: every layer slides, so nothing is compacted and decoding is unchanged."""
    model = tiny_model("mistral")
    model.config.sliding_window = 32
    model = AutoModelForCausalLM.from_config(model.config, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    ids = prompt_ids()
    expected = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    result = generation.generate(model, None, ids, rk.ReFreeKV(threshold=0.3), max_new_tokens=8)
    assert result.tokens == expected
    assert result.trace.layers == [] and result.trace.meta["sliding_layers"] == [0, 1]
    assert result.stats["kv_bytes_kept"] == result.stats["kv_bytes_full"]
