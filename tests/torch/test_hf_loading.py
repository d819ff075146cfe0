"""``refreekv_torch.loading.load_model`` and end-to-end generation on a saved model and on the bundled one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from refreekv_torch import generation, hf_adapter, loading  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

import refreekv_edu as rk  # noqa: E402

WORDS = [f"w{i}" for i in range(120)]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, "<user>": 2, "<assistant>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A tiny random Llama + tokenizer saved with save_pretrained (the local-directory code path)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=124, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path, model


def test_load_local_directory_gives_the_same_model(saved_llama):
    path, original = saved_llama
    model, tok = loading.load_model(str(path))
    assert not model.training and model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)
    assert tok("w0 w1")["input_ids"] == [4, 5]


def test_load_by_dtype_and_eager(saved_llama):
    model, _ = loading.load_model(saved_llama[0], dtype="bfloat16", attn_implementation="eager")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="dtype must be one of"):
        loading.load_model(saved_llama[0], dtype="float8")
    with pytest.raises(ValueError, match="'sdpa' or 'eager'"):
        loading.load_model(saved_llama[0], attn_implementation="flash_attention_2")


def test_string_prompt_uses_the_chat_template(saved_llama):
    model, tok = loading.load_model(saved_llama[0])
    ids = generation.encode_prompt(tok, " ".join(WORDS[:30]))
    assert ids[0] == tok.convert_tokens_to_ids("<user>") and ids[-1] == tok.convert_tokens_to_ids("<assistant>")
    assert generation.encode_prompt(tok, " ".join(WORDS[:3]), chat_template=False) == [4, 5, 6]
    result = rk.generate(
        model, tok, " ".join(WORDS[:40]), policy=rk.FixedBudget(budget=0.5), max_new_tokens=5, stop_at_eos=False
    )
    assert result.stats["prompt_tokens"] == 42 and len(result.tokens) == 5
    assert result.trace.tokens[:2] == ["<user>", "w0"]
    assert result.trace.layers[0].n_kept == 21
    with pytest.raises(TypeError, match="prompt must be"):
        generation.encode_prompt(tok, 3.5)


def test_unknown_family_is_refused_with_the_supported_list(tmp_path):
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=124)).save_pretrained(
        tmp_path
    )
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(hf_adapter.UnsupportedModelError) as err:
        loading.load_model(str(tmp_path))
    message = str(err.value)
    assert "'gpt2'" in message and all(kind in message for kind in hf_adapter.SUPPORTED_MODEL_TYPES)


def test_resolve_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        loading.resolve(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        loading.resolve(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"")
    assert loading.resolve(tmp_path) == (str(tmp_path), "m.gguf")  # a directory holding one GGUF
    with pytest.raises(FileNotFoundError, match="no such model"):
        loading.resolve("./nowhere/model")
    assert loading.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


@pytest.mark.slow
def test_bundled_model_full_cache_matches_model_generate():
    """SmolLM2-135M (GGUF, dequantized): 32 greedy tokens through our loop equal model.generate; ReFreeKV shrinks the cache."""
    model, tok = rk.load_model("smollm2-135m", backend="torch")
    assert hf_adapter.model_type(model) == "llama" and len(hf_adapter.attention_layers(model)) == 30
    prompt = "Write a short poem about the sea and the wind."
    ids = generation.encode_prompt(tok, prompt)
    model.generation_config.eos_token_id = None  # compare exactly 32 tokens
    # an explicit mask: without it (and with eos unset) generate would take the chat template's <|im_end|>
    # tokens, which double as the pad token, for padding and mask them out
    x = torch.tensor([ids])
    expected = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, do_sample=False)[
        0, len(ids) :
    ].tolist()
    result = rk.generate(model, tok, prompt, policy=rk.FullCache(), max_new_tokens=32, stop_at_eos=False)
    assert result.tokens == expected
    pruned = rk.generate(model, tok, prompt, policy=rk.ReFreeKV(), max_new_tokens=8)
    assert pruned.stats["kv_bytes_kept"] < pruned.stats["kv_bytes_full"]
    assert len(pruned.trace.layers) == 30
