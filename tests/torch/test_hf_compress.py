"""The transformers integration on tiny random models of every supported family.

What is checked, and why it proves the integration right:

1. FullCache / FixedBudget(1.0) decode token-identically to ``model.generate`` (nothing is lost by the
   capture hooks, the compaction path or the attention wrapper).
2. With real pruning, every decode step's logits equal those of a *full* cache in which the evicted
   keys are masked out per layer and per KV head (a custom attention function). This proves the
   gather, the positions (RoPE continues at the prompt length) and the per-layer masks together.
3. The cache really shrinks: per-layer tensors have ``(1, Hkv, n_kept, D)`` and the bytes follow.
4. Every preset of the core (``paper``, ``sinks-in-metric``, ``h2o-ranking``, ``official-script``) on every
   family: full layers keep their original tensors, pruned layers hold exactly the kept rows, and (2) holds.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refreekv_torch import generation, hf_adapter, hf_cache, hf_compress  # noqa: E402
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
from refreekv_edu.integration import shared_positions  # noqa: E402
from refreekv_edu.policies import PRESETS  # noqa: E402


def _kv(model, cache) -> dict:
    """The cache under the keyword this transformers version's forward takes (``cache=`` >= 5.3, else
    ``past_key_values=``), so these tests run on both versions CI installs."""
    return {hf_adapter.cache_kwarg(model): cache}

PROMPT_LEN = 48
PRESET_NAMES = tuple(PRESETS)  # paper, sinks-in-metric, h2o-ranking, official-script
FAMILIES = {
    "llama": (LlamaConfig, {}),
    "mistral": (MistralConfig, {"sliding_window": None}),  # like Mistral-7B v0.2+: full attention
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {}),
    # layer 0 slides over 16 tokens (left alone), layer 1 is global (compressed)
    "gemma3": (Gemma3TextConfig, {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16}),
}


def tiny_model(family: str, attn: str = "sdpa", heads: int = 4, kv_heads: int = 2, seed: int = 0, layers: int = 2):
    config_cls, extra = FAMILIES[family]
    if "layer_types" in extra:  # repeat the family's pattern over `layers` layers
        extra = {**extra, "layer_types": (extra["layer_types"] * layers)[:layers]}
    config = config_cls(
        num_hidden_layers=layers,
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
        logits = model(input_ids=torch.tensor([[token]]), use_cache=True, **_kv(model, cache)).logits[0, -1]
        out.append(logits.float())
    return torch.stack(out)


@pytest.mark.parametrize(
    ("family", "policy", "attn"),
    [
        ("llama", rk.ReFreeKV.preset("official-script", threshold=0.3), "sdpa"),
        ("llama", rk.FixedBudget(budget=0.5, ranking="snapkv"), "eager"),
        ("mistral", rk.FixedBudget(budget=0.5), "sdpa"),
        ("qwen2", rk.ReFreeKV.preset("official-script", threshold=0.3), "sdpa"),
        ("qwen3", rk.FixedBudget(budget=0.4), "sdpa"),
        ("gemma3", rk.ReFreeKV.preset("official-script", threshold=0.3), "sdpa"),
        ("gemma3", rk.FixedBudget(budget=0.5, ranking="recency"), "eager"),
        ("llama", rk.FixedBudget(budget=0.5, ranking="recency", sinks=4, window=0), "eager"),  # StreamingLLM
    ],
    ids=repr,
)
def test_pruned_decode_equals_full_cache_with_evicted_keys_masked(family, policy, attn):
    model = tiny_model(family, attn=attn)
    run = _pruned_masked_and_full_runs(model, policy, prompt_ids(), prompt_ids(8, seed=7))
    assert any(d.n_evicted > 0 for d in run["trace"].layers), "the test needs real evictions"
    torch.testing.assert_close(run["pruned"], run["reference"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(run["pruned"], run["full"], atol=1e-4), (
        "pruning should change the logits (else the test proves nothing)"
    )


def _pruned_masked_and_full_runs(model, policy, ids, follow) -> dict:
    """Teacher-force ``follow`` after the prompt ``ids`` three ways: the compacted cache, the full cache with the
    evicted keys masked out (the reference), and the plain full cache. Also returns the trace, the compacted cache
    and a plain prefill's cache, and ``(layer, keys, values)`` of every cache layer before and after compaction."""
    with torch.no_grad():
        press = hf_compress.Compressor(model, policy, auto=False)
        with press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
            captured_rows = {i: c.hidden.shape[1] for i, c in press.adapter.captured.items()}
            before = [(layer, layer.keys, layer.values) for layer in cache.layers]
            trace = press.compact(cache)
            after = [(layer, layer.keys, layer.values) for layer in cache.layers]  # before decoding appends
            pruned = _decode_logits(model, cache, follow)

        full_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, full_cache))
        prefill = DynamicCache(config=model.config)  # a plain prefill, kept as it is to compare tensors
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, prefill))
        evicted = {d.layer: torch.as_tensor(d.evicted_mask()) for d in trace.layers}
        saved = model.config._attn_implementation
        groups = model.config.num_attention_heads // model.config.num_key_value_heads
        model.config._attn_implementation = _register_evicted_mask_attention(evicted, groups)
        try:
            reference = _decode_logits(model, full_cache, follow)
        finally:
            model.config._attn_implementation = saved

        plain_cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, plain_cache))
        full = _decode_logits(model, plain_cache, follow)
    return {
        "pruned": pruned, "reference": reference, "full": full, "trace": trace, "press": press,
        "before": before, "after": after, "prefill": prefill, "captured_rows": captured_rows,
    }  # fmt: skip


# -------------------------------------------------------------------------------- (3) memory really freed
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_tensors_have_kept_sizes(family):
    model = tiny_model(family)
    ids = prompt_ids()
    info = hf_adapter.attention_layers(model)
    with torch.no_grad():
        full = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, full))
        press = hf_compress.Compressor(model, rk.FixedBudget(budget=0.5), auto=False)
        with press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
            trace = press.compact(cache)

    decided = {d.layer: d for d in trace.layers}
    assert set(decided) == {i.index for i in info if i.compressible}
    expected_bytes = 0
    for layer_info in info:
        layer = cache.layers[layer_info.index]
        if not layer_info.compressible:  # untouched: same tensors as a plain prefill
            assert not isinstance(layer, hf_cache.CompactedKVCache)
            torch.testing.assert_close(layer.keys, full.layers[layer_info.index].keys, rtol=0, atol=0)
            expected_bytes += hf_cache.layer_bytes(layer)
            continue
        d = decided[layer_info.index]
        hkv, dim = layer_info.num_kv_heads, layer_info.head_dim
        assert d.kept.shape == (hkv, d.n_kept)  # gqa="group": one kept set per KV head
        assert d.n_kept == int(np.ceil(0.5 * len(ids)))
        assert isinstance(layer, hf_cache.CompactedKVCache)
        assert tuple(layer.keys.shape) == (1, hkv, d.n_kept, dim)
        assert tuple(layer.values.shape) == (1, hkv, d.n_kept, dim)
        assert hf_cache.layer_bytes(layer) == 2 * hkv * d.n_kept * dim * 4  # float32, Hkv heads only
        expected_bytes += hf_cache.layer_bytes(layer)
        # the kept rows are the original rows, head by head
        original = full.layers[layer_info.index]
        for h in range(hkv):
            rows = torch.as_tensor(d.kept[h])
            torch.testing.assert_close(layer.keys[0, h], original.keys[0, h, rows], rtol=0, atol=0)
            torch.testing.assert_close(layer.values[0, h], original.values[0, h, rows], rtol=0, atol=0)
    assert press.stats.kv_bytes_kept == expected_bytes
    assert press.stats.kv_bytes_kept < press.stats.kv_bytes_full
    assert press.stats.kept_per_layer == [hf_cache.layer_rows(layer) for layer in cache.layers]


def test_positions_continue_at_prompt_length():
    model = tiny_model("llama")
    ids = prompt_ids()
    with torch.no_grad(), hf_compress.Compressor(model, rk.FixedBudget(budget=0.25), auto=False) as press:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
        press.compact(cache)
        rows = cache.layers[0].num_rows
        assert rows == 12 and cache.get_seq_length() == len(ids)  # 12 rows held, 48 tokens seen
        model(input_ids=torch.tensor([[5]]), use_cache=True, **_kv(model, cache))
        assert cache.layers[0].num_rows == rows + 1 and cache.get_seq_length() == len(ids) + 1
        # what RoPE receives: transformers computes position_ids from get_seq_length()
        seen = {}
        hook = model.model.rotary_emb.register_forward_hook(
            lambda m, a, kw, out: seen.update(pos=kw["position_ids"]), with_kwargs=True
        )
        model(input_ids=torch.tensor([[6]]), use_cache=True, **_kv(model, cache))
        hook.remove()
    assert seen["pos"].tolist() == [[len(ids) + 1]]


def test_hf_generate_inside_compress_matches_our_generate():
    model = tiny_model("qwen3")
    ids = prompt_ids()
    policy = rk.ReFreeKV.preset("official-script", threshold=0.3)
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
    result = rk.generate(
        model, None, prompt_ids(), policy=rk.ReFreeKV.preset("official-script", threshold=0.3), max_new_tokens=4
    )
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
        generation.generate(
            model, None, ids, rk.ReFreeKV.preset("official-script"), max_new_tokens=12, temperature=1.0, seed=s
        )
        for s in (3, 3, 4)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].tokens != runs[2].tokens


# -------------------------------------------------------------------------------- errors
def test_expand_mode_refuses_gqa_cache_but_works_without_gqa():
    with pytest.raises(ValueError, match="gqa='group'"):
        hf_compress.Compressor(tiny_model("llama", layers=3), rk.ReFreeKV(gqa="expand"))  # layer 2 is pruned
    with pytest.raises(ValueError, match="gqa='group'"):
        hf_compress.Compressor(tiny_model("llama"), rk.ReFreeKV.preset("official-script", gqa="expand"))
    # The paper never prunes layers 0-1: on a 2-layer model there is nothing to compact, so nothing to refuse.
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
        policy = rk.ReFreeKV.preset("official-script", threshold=0.3)
        with torch.no_grad(), hf_compress.Compressor(model, policy, auto=False) as press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
            press.compact(cache)
            if chunked:
                logits.append(model(input_ids=torch.tensor([follow]), use_cache=True, **_kv(model, cache)).logits[0].float())
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
    result = generation.generate(
        model, None, ids, rk.ReFreeKV.preset("official-script", threshold=0.3), max_new_tokens=8
    )
    assert result.tokens == expected
    assert result.trace.layers == [] and result.trace.meta["sliding_layers"] == [0, 1]
    assert result.stats["kv_bytes_kept"] == result.stats["kv_bytes_full"]


# -------------------------------------------------------------------------------- (4) every preset
PRESET_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")


def _layer_kinds(model, policy) -> dict[str, list[int]]:
    info = hf_adapter.attention_layers(model)
    return {
        "sliding": [i.index for i in info if not i.compressible],
        "full": [i.index for i in info if i.compressible and not policy.prunes_layer(i.index)],
        "pruned": [i.index for i in info if i.compressible and policy.prunes_layer(i.index)],
    }


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("family", PRESET_FAMILIES)
def test_every_preset_on_every_family(family, preset):
    """Four layers, so that the paper's full layers 0-1 and pruned layers 2-3 meet in one model.

    The threshold is raised to 0.3 for every preset: at the paper's 1%, a random tiny model's near-uniform
    attention over 48 keys lets no candidate go (ratio(e) ~ e / 2n), and this test checks the integration
    (what is kept, where, and how decoding reads it), not the threshold. The presets' other fields stay.
    """
    policy = rk.ReFreeKV.preset(preset, threshold=0.3)
    model = tiny_model(family, layers=4)
    ids = prompt_ids()
    kinds = _layer_kinds(model, policy)
    assert kinds["pruned"], "the test needs a pruned layer"
    run = _pruned_masked_and_full_runs(model, policy, ids, prompt_ids(8, seed=7))
    trace, press, prefill = run["trace"], run["press"], run["prefill"]
    decided = {d.layer: d for d in trace.layers}
    assert sorted(decided) == sorted(kinds["full"] + kinds["pruned"])  # sliding layers: no decision

    # capture: exactly policy.query_rows query rows per pruned layer (1 for recency, never the whole prompt),
    # nothing for a full layer
    expected_rows = {i: policy.query_rows for i in kinds["pruned"]}
    assert run["captured_rows"] == expected_rows

    for index in kinds["full"] + kinds["sliding"]:  # untouched: the same layer object, the same tensors
        (layer, keys, values), (original, original_keys, original_values) = run["after"][index], run["before"][index]
        assert layer is original and not isinstance(layer, hf_cache.CompactedKVCache)
        assert keys is original_keys and values is original_values  # no copy
        torch.testing.assert_close(keys, prefill.layers[index].keys, rtol=0, atol=0)
        torch.testing.assert_close(values, prefill.layers[index].values, rtol=0, atol=0)
        if index in kinds["full"]:
            assert keys.shape[-2] == values.shape[-2] == len(ids)  # every prompt row
    for index in kinds["full"]:
        d = decided[index]
        assert d.full_layer and d.budget == 1.0 and d.n_evicted == 0 and d.n_kept == len(ids)
        assert press.stats.kept_per_layer[index] == len(ids)  # counted at 100%
    for index in kinds["pruned"]:  # exactly the kept rows, head by head, in position order
        d, (layer, keys, values) = decided[index], run["after"][index]
        assert isinstance(layer, hf_cache.CompactedKVCache) and not d.full_layer
        assert layer.prompt_rows == d.n_kept and keys.shape[-2] == values.shape[-2] == d.n_kept
        assert press.stats.kept_per_layer[index] == d.n_kept
        original = prefill.layers[index]
        for h in range(d.kept.shape[0]):
            rows = torch.as_tensor(d.kept[h])
            torch.testing.assert_close(keys[0, h], original.keys[0, h, rows], rtol=0, atol=0)
            torch.testing.assert_close(values[0, h], original.values[0, h, rows], rtol=0, atol=0)
        assert d.kept[0, : policy.sinks].tolist() == list(range(policy.sinks))  # sinks always kept
        if policy.ranking == "recency":  # one kept set for every head: the newest positions
            assert (d.kept == d.kept[:1]).all()
            assert d.kept[0, policy.sinks :].tolist() == list(range(len(ids) - d.n_kept + policy.sinks, len(ids)))
    assert any(decided[i].n_evicted > 0 for i in kinds["pruned"]), "the test needs real evictions"
    mean = np.mean([decided[i].budget for i in decided])
    np.testing.assert_allclose(trace.mean_budget, mean, rtol=1e-6)

    torch.testing.assert_close(run["pruned"], run["reference"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(run["pruned"], run["full"], atol=1e-4), "pruning should change the logits"


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_as_published_run_end_to_end(preset):
    """Each preset with its own threshold, through rk.generate: full layers at 100% in the stats, bytes consistent."""
    policy = rk.ReFreeKV.preset(preset)
    model = tiny_model("llama", layers=4)
    result = rk.generate(model, None, prompt_ids(), policy=policy, max_new_tokens=4)
    assert len(result.trace.layers) == 4 and len(result.tokens) == 4
    for d in result.trace.layers:
        assert d.full_layer == (d.layer in policy.full_layers)
        assert result.stats["kept_per_layer"][d.layer] == d.n_kept
    for index in policy.full_layers:
        assert result.stats["kept_per_layer"][index] == PROMPT_LEN
    row_bytes = 2 * 2 * 16 * 4  # keys + values, Hkv = 2, D = 16, float32
    assert result.stats["kv_bytes_full"] == 4 * PROMPT_LEN * row_bytes
    assert result.stats["kv_bytes_kept"] == sum(result.stats["kept_per_layer"]) * row_bytes


def test_model_of_full_layers_only_is_left_alone():
    """The paper on a two-layer model: both layers are full, nothing is copied and the attention stays the model's."""
    model = tiny_model("llama", layers=2)
    ids = prompt_ids()
    expected = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    with torch.no_grad(), hf_compress.Compressor(model, rk.ReFreeKV(), auto=False) as press:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
        layers = [(layer, layer.keys.data_ptr()) for layer in cache.layers]
        trace = press.compact(cache)
        assert model.config._attn_implementation == "sdpa"  # no compacted layer: no fitted masks needed
        assert all(cache.layers[i] is layer and layer.keys.data_ptr() == ptr for i, (layer, ptr) in enumerate(layers))
    assert [d.full_layer for d in trace.layers] == [True, True] and trace.budgets.tolist() == [1.0, 1.0]
    result = generation.generate(model, None, ids, rk.ReFreeKV(), max_new_tokens=8)
    assert result.tokens == expected and result.stats["kv_bytes_kept"] == result.stats["kv_bytes_full"]


def test_single_slice_equals_per_head_gather(monkeypatch):
    """Recency keeps one set for all heads: one index_select at Hkv heads, equal to the per-head gather."""
    keys = torch.randn(1, 3, 40, 16)
    positions = np.array([0, 1, 2, 3, *range(25, 40)])
    kept = np.stack([positions] * 3)
    assert shared_positions(kept) is not None
    torch.testing.assert_close(
        hf_cache.select_rows(keys, positions), hf_cache.gather_rows(keys, kept), rtol=0, atol=0
    )
    per_head = np.stack([positions, positions, np.array([0, 1, 2, 4, *range(25, 40)])])
    assert shared_positions(per_head) is None

    # In a real compaction: the paper's decisions take the single-slice path, H2O's per-head ones the gather.
    calls = []
    for name in ("select_rows", "gather_rows"):
        original = getattr(hf_cache, name)
        monkeypatch.setattr(hf_cache, name, lambda *a, _name=name, _f=original: calls.append(_name) or _f(*a))
    model = tiny_model("qwen2", layers=3)
    ids = prompt_ids()
    for preset, path in (("paper", "select_rows"), ("h2o-ranking", "gather_rows")):
        calls.clear()
        policy = rk.ReFreeKV.preset(preset, threshold=0.3)
        with torch.no_grad(), hf_compress.Compressor(model, policy, auto=False) as press:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), use_cache=True, **_kv(model, cache))
            press.compact(cache)
        assert calls == [path, path], (preset, calls)  # keys and values of layer 2


# -------------------------------------------------------------------------------- bad input (issue 14)
def _forward_counter(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls


def test_bad_ids_and_overlong_prompts_are_refused_before_the_forward_pass():
    model = tiny_model("llama")  # vocabulary 128
    model.config.max_position_embeddings = 8192  # the bundled model's context
    calls = _forward_counter(model)
    cases = [
        ([128, 5], "token id 128 is out of range: the model's vocabulary has 128 tokens"),
        ([10**7, 5], "token id 10000000 is out of range"),
        ([-3, 5], ">= 0"),
        ([1] * 9000, "the prompt has 9000 tokens but the model's context is 8192 tokens"),
        ([1] * 100_000, "the prompt has 100000 tokens but the model's context is 8192 tokens"),
        ([1] * 8191, "plus max_new_tokens=2 exceed the model's context of 8192 tokens"),
    ]
    for prompt, match in cases:
        with pytest.raises(ValueError, match=match):
            rk.generate(model, None, prompt, max_new_tokens=2)
        with pytest.raises(ValueError, match=match):  # the backend's own entry point checks too
            generation.generate(model, None, prompt, rk.ReFreeKV(), max_new_tokens=2)
    for prompt, kwargs, error, match in [
        ([{"role": "user"}], {}, ValueError, "'role' and 'content'"),
        ("", {"chat_template": False}, ValueError, "prompt is empty"),
        ([1, 2, 3], {"temperature": float("nan")}, ValueError, "temperature must be a finite number"),
        ([1, 2, 3], {"temperature": "0.5"}, ValueError, "temperature must be a finite number"),
        ([1, 2, 3], {"temperature": 1.0, "top_p": 0.0}, ValueError, "top_p must lie in"),
    ]:
        with pytest.raises(error, match=match):
            generation.generate(model, None, prompt, rk.ReFreeKV(), max_new_tokens=2, **kwargs)
    assert calls == [], "a bad input reached the forward pass"
    assert len(generation.generate(model, None, [127, 0], rk.ReFreeKV(), max_new_tokens=2).tokens) == 2


def test_nested_compress_on_the_same_model_says_nested():
    model = tiny_model("llama")
    with hf_compress.compress(model, rk.ReFreeKV()):
        with pytest.raises(ValueError, match="nested"), hf_compress.compress(model, rk.FixedBudget(budget=0.5)):
            pass
        with pytest.raises(ValueError, match="nested"):
            rk.generate(model, None, prompt_ids(), policy=rk.FixedBudget(budget=0.5), max_new_tokens=1)
    with hf_compress.compress(model, rk.FixedBudget(budget=0.5)):  # after the outer block: fine again
        pass
    assert model.config._attn_implementation == "sdpa"


def test_a_static_cache_says_static_caches_are_not_supported():
    from transformers import StaticCache

    model = tiny_model("llama")
    ids = torch.tensor([prompt_ids()])
    with hf_compress.compress(model, rk.FixedBudget(budget=0.5)) as press:
        with pytest.raises(ValueError, match="static caches are not supported"):
            model.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static")
        with pytest.raises(ValueError, match="static caches are not supported"):
            press.compact(StaticCache(config=model.config, max_cache_len=64))


def test_the_compressor_uses_the_public_attention_api(monkeypatch):
    """The attention switch goes through model.set_attn_implementation, and back on exit."""
    model = tiny_model("llama", layers=3)
    seen = []
    original = type(model).set_attn_implementation
    monkeypatch.setattr(
        type(model), "set_attn_implementation", lambda self, impl, **kw: seen.append(impl) or original(self, impl, **kw)
    )
    generation.generate(model, None, prompt_ids(), rk.FixedBudget(budget=0.5), max_new_tokens=2)
    assert seen == ["refreekv_sdpa", "sdpa"] and model.config._attn_implementation == "sdpa"
