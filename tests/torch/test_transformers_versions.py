"""The torch integration is the same on every transformers version the package declares (issue 19).

CI runs this file twice: in the main venv (the newest transformers) and in a second venv with kvpress, which pins
transformers 5.2. What differed there before: the cache keyword (``cache=`` vs ``past_key_values=``, an unknown
one is silently ignored and the cache stays empty), and the GGUF tokenizer conversion (5.0-5.2 prepend
``<|im_start|>`` to a raw encode and call it the EOS).
"""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
import refreekv_edu as rk  # noqa: E402
from refreekv_edu.encoding import encode_prompt  # noqa: E402
from refreekv_edu.eval.tasks import make_samples  # noqa: E402

#: sha256 (first 12 hex digits) of the JSON token ids, and their count, of prompts that do not depend on the
#: haystack filler: the chat-templated ``short`` and ``reading`` eval prompts and one raw (no template) text.
#: Measured on transformers 5.2.0 and 5.25.0 (identical after the tokenizer normalisation in loading.py).
PINNED = {
    "short-s0-i0": (44, "bec46857150a"),
    "short-s0-i1": (43, "2c17d00360ee"),
    "short-s0-i2": (41, "4d258acf7f67"),
    "reading-s0-i0": (141, "292682cd4956"),
    "reading-s0-i1": (140, "d8d63ed9be1f"),
    "raw": (34, "c39351bbb02e"),
}
RAW_TEXT = "The quick brown fox jumps over the lazy dog. Passkey: 48213.\n  Indented line, tabs\tand unicode: naïve café."


def _digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps([int(i) for i in ids]).encode()).hexdigest()[:12]


def pinned_prompts() -> dict[str, tuple[str, bool]]:
    """id -> (prompt, chat) for the pinned prompts."""
    prompts = {s.id: (s.prompt, True) for s in make_samples("short", 0, 3) + make_samples("reading", 0, 2)}
    return prompts | {"raw": (RAW_TEXT, False)}


@pytest.fixture(scope="module")
def bundled():
    return rk.load_model("smollm2-135m", backend="torch")


def test_pinned_token_ids(bundled):
    _, tok = bundled
    got = {}
    for key, (prompt, chat) in pinned_prompts().items():
        ids = encode_prompt(tok, prompt, chat_template=chat)
        got[key] = (len(ids), _digest(ids))
    assert got == PINNED, f"tokenization changed (this transformers version tokenizes differently): {got}"


def test_tokenizer_follows_gguf_metadata(bundled):
    _, tok = bundled
    # The GGUF says add_bos_token = False, bos = 1 (<|im_start|>), eos = 2 (<|im_end|>), pad = 2.
    assert tok.encode("Hello world") == tok.encode("Hello world", add_special_tokens=False)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.eos_token == "<|im_end|>"


def test_cache_keyword_matches_forward_signature(bundled):
    import inspect

    from refreekv_torch import hf_adapter

    model, _ = bundled
    name = hf_adapter.cache_kwarg(model)
    assert name in inspect.signature(model.forward).parameters
    assert name in inspect.signature(model.model.layers[0].self_attn.forward).parameters


def test_generate_prunes_on_this_version(bundled):
    model, tok = bundled
    out = rk.generate(model, tok, make_samples("reading", 0, 1)[0].prompt, policy=rk.ReFreeKV(), max_new_tokens=2)
    pruned = [d for d in out.trace.layers if d.layer not in (0, 1)]
    assert len(out.trace.layers) == model.config.num_hidden_layers
    assert out.stats["kv_bytes_kept"] < out.stats["kv_bytes_full"]
    rows = out.stats["kept_per_layer"]
    assert rows[0] == rows[1] == out.stats["prompt_tokens"]
    assert [rows[d.layer] for d in pruned] == [int(d.kept.shape[1]) for d in pruned]


def test_prefill_that_never_reaches_the_cache_raises(bundled):
    """A cache passed under a keyword the model ignores (the 5.2 failure) is an error, not an unpruned cache."""
    from refreekv_torch.hf_compress import Compressor

    model, tok = bundled
    press = Compressor(model, rk.ReFreeKV(), auto=False)
    with press:
        adapter = press.adapter
        adapter.cache_kwarg = "not_the_cache_keyword"
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            adapter.prefill(tok.encode("one two three four five six seven eight nine ten"))


def test_compact_without_capture_raises(bundled):
    from refreekv_torch.hf_compress import Compressor

    model, _ = bundled
    with Compressor(model, rk.ReFreeKV(), auto=False) as press, pytest.raises(RuntimeError, match="nothing to compact"):
        press.compact()
