"""The GGUF loader for MLX: tensor names, quantization specs, config, a tiny GGUF round trip, the bundled model."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'refreekv_edu[mlx]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'refreekv_edu[mlx]')")

from mlx_lm.models import llama  # noqa: E402
from refreekv_mlx.gguf_loader import (  # noqa: E402
    gguf_name_to_mlx,
    llama_args_from_gguf,
    load_gguf_model,
    load_model,
    quant_spec,
)
from tiny_gguf import write_tiny_llama_gguf  # noqa: E402


def test_gguf_names_map_to_mlx_lm_llama_parameters():
    assert gguf_name_to_mlx("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert gguf_name_to_mlx("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_name_to_mlx("token_embd.scales") == "model.embed_tokens.scales"
    assert gguf_name_to_mlx("output_norm.weight") == "model.norm.weight"
    for bad in ("blk.0.attn_qkv.weight", "rope_freqs.weight"):
        with pytest.raises(KeyError):
            gguf_name_to_mlx(bad)


def test_quant_spec_reads_bits_and_group_from_packed_shapes():
    w = mx.random.normal((8, 64))
    for bits, group in ((4, 32), (8, 32), (4, 64)):
        packed, scales, _ = mx.quantize(w, group_size=group, bits=bits)
        spec = quant_spec(packed, scales, 64)
        assert (spec.bits, spec.group_size) == (bits, group)
    with pytest.raises(ValueError, match="quantized"):
        quant_spec(mx.zeros((8, 7), mx.uint32), mx.zeros((8, 2)), 64)


def test_non_llama_gguf_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="mlx_lm.convert"):
        llama_args_from_gguf({"general.architecture": "qwen2"}, has_output=False)


def _tiny_llama_gguf(path) -> llama.Model:
    """Write a tiny random llama as a float32 GGUF; return the source model."""
    return write_tiny_llama_gguf(path, seed=0, layers=2)


def test_tiny_gguf_round_trip_gives_the_same_logits(tmp_path):
    path = tmp_path / "tiny.gguf"
    source = _tiny_llama_gguf(path)
    loaded = load_gguf_model(path)
    assert loaded.args.rope_traditional and loaded.args.tie_word_embeddings
    assert loaded.args.num_key_value_heads == 2 and loaded.args.head_dim == 8
    tokens = mx.array([[1, 5, 7, 11, 3, 2]])
    np.testing.assert_allclose(np.array(loaded(tokens)), np.array(source(tokens)), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="dtype=, dequantize="):
        load_model(str(path), revision="main")
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.gguf"))


# ------------------------------------------------------------------------------ the bundled model
@pytest.fixture(scope="module")
def bundled_path():
    from refreekv_edu.models import fetch_model

    try:
        return fetch_model("smollm2-135m", quiet=True)
    except RuntimeError as exc:  # offline and not cached
        pytest.skip(f"bundled model not available: {exc}")


@pytest.mark.slow
def test_bundled_model_structure_and_answer(bundled_path):
    """~30-60 s on a 2-core CPU: loads the Q4_1 GGUF quantized and answers a one-word question."""
    import refreekv_edu as rk

    model, tokenizer = load_model(str(bundled_path))
    args = model.args
    assert (args.num_hidden_layers, args.num_attention_heads, args.num_key_value_heads, args.head_dim) == (30, 9, 3, 64)
    assert args.rope_traditional and args.rope_theta == 1e5
    embed, q_proj = model.model.embed_tokens, model.layers[0].self_attn.q_proj
    assert (embed.bits, embed.group_size) == (8, 32) and (q_proj.bits, q_proj.group_size) == (4, 32)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    out = rk.generate(
        model, tokenizer, "What is the capital of France? Answer in one word.", policy=rk.FullCache(), max_new_tokens=8
    )
    assert "Paris" in out.text
    # Bad ids and overlong prompts are refused before the forward pass (an id of 10**7 used to crash the process).
    vocab = model.model.embed_tokens.weight.shape[0]
    for prompt, match in (([10**7, 5], "vocabulary has"), ([vocab, 5], f"token id {vocab} is out of range"),
                          ([1] * 9000, "9000 tokens but the model's context is 8192 tokens")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            rk.generate(model, tokenizer, prompt, max_new_tokens=2)
