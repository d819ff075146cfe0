"""The GGUF conversion cache: convert once, later loads read the converted copy (issue 14, "a new user's frictions").

Fast tests drive the caching logic with a tiny model (the GGUF conversion is replaced by a tiny saved Llama, or a
tiny float32 GGUF for MLX); the slow ones convert the bundled 135M GGUF and check that the cached load gives the
same weights, tokenizer and greedy tokens as an uncached one. Nothing is downloaded: the bundled GGUF must
already be in the default cache (``~/.cache/refreekv_edu/smollm2-135m/``), else those tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from refreekv_edu import convert_cache, models

BUNDLED = models.ARTIFACTS["smollm2-135m"]
#: A pid above Linux's largest pid_max (2**22): no live process has it.
DEAD_PID = 2**22 + 17


def _bundled_gguf() -> Path:
    """The bundled GGUF in the default cache (never fetched here)."""
    path = Path.home() / ".cache" / "refreekv_edu" / "smollm2-135m" / Path(BUNDLED.member).name
    if os.environ.get("REFREEKV_CACHE"):
        path = models.cache_dir() / "smollm2-135m" / Path(BUNDLED.member).name
    if not path.is_file() or path.stat().st_size != BUNDLED.file_size:
        pytest.skip(f"the bundled GGUF is not at {path} (run `refreekv fetch-model` once; tests never download)")
    return path


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """An empty REFREEKV_CACHE for one test."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("REFREEKV_CACHE", str(root))
    return root


# ------------------------------------------------------------------------------ torch, fast (conversion faked)
torch_only = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
    reason="torch and transformers are not installed (pip install 'refreekv_edu[torch]')",
)


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A ``.gguf`` file whose "conversion" yields a tiny saved Llama: counts conversions, keeps the real
    ``from_pretrained`` for every other source (the cache folder)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

    tiny = tmp_path / "tiny_llama"
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=40, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tiny)
    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(38)}}
    core = Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(tiny)

    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF tiny stand-in, version 1")
    calls = {"model": 0, "tokenizer": 0}
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake_model(source, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_model(source, *args, **kwargs)
        calls["model"] += 1
        return real_model(tiny, *args, **kwargs)

    def fake_tok(source, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_tok(source, *args, **kwargs)
        calls["tokenizer"] += 1
        return real_tok(tiny, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", staticmethod(fake_model))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", staticmethod(fake_tok))
    # The stand-in is not a real GGUF: no metadata for the tokenizer normalisation to read (tested on the real one
    # in tests/torch/test_transformers_versions.py).
    from refreekv_torch import loading

    monkeypatch.setattr(loading, "gguf_tokenizer", lambda tokenizer, gguf: tokenizer)
    return gguf, calls


def _same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch_only
def test_torch_converts_once_then_loads_the_cached_copy(fake_gguf, cache_root, capsys):
    from refreekv_torch import loading

    gguf, calls = fake_gguf
    model1, tok1 = loading.load_model(gguf)
    err = capsys.readouterr().err
    assert calls == {"model": 1, "tokenizer": 1}
    assert "converting tiny.gguf once" in err and "cached at" in err  # said the first time
    [folder] = (cache_root / "converted").glob("tiny-*/torch-*-float32")
    assert convert_cache.cache_is_complete(folder)
    manifest = json.loads((folder / convert_cache.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == models.sha256_of(gguf) and "model.safetensors" in manifest["files"]
    assert not list(folder.parent.glob(".tmp-*"))

    model2, tok2 = loading.load_model(gguf)
    assert calls == {"model": 1, "tokenizer": 1}  # no second conversion
    assert "converting" not in capsys.readouterr().err  # and nothing printed
    assert _same_weights(model1, model2)
    assert tok1("w1 w2 w3").input_ids == tok2("w1 w2 w3").input_ids
    assert model2.config._name_or_path == str(gguf)

    uncached, _ = loading.load_model(gguf, cache=False)  # converts, reads and writes nothing
    assert calls["model"] == 2 and _same_weights(uncached, model2)


@torch_only
def test_torch_dtype_and_attention_options_still_apply(fake_gguf, cache_root):
    import torch
    from refreekv_torch import loading

    gguf, calls = fake_gguf
    model, _ = loading.load_model(gguf, dtype="bfloat16", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    model, _ = loading.load_model(gguf, dtype=torch.bfloat16)  # the same key, read from the cache
    assert calls["model"] == 1 and next(model.parameters()).dtype == torch.bfloat16
    model, _ = loading.load_model(gguf)  # float32 is another key: converted again
    assert calls["model"] == 2 and next(model.parameters()).dtype == torch.float32
    assert {p.name.rsplit("-", 1)[1] for p in (cache_root / "converted").glob("tiny-*/torch-*")} == {
        "bfloat16",
        "float32",
    }
    with pytest.raises(ValueError, match="dtype"):
        loading.load_model(gguf, dtype="float8")


@torch_only
def test_torch_cache_key_follows_the_gguf_contents(fake_gguf, cache_root):
    from refreekv_torch import loading

    gguf, calls = fake_gguf
    loading.load_model(gguf)
    gguf.write_bytes(b"GGUF tiny stand-in, version 2")  # another file at the same path
    loading.load_model(gguf)
    assert calls["model"] == 2
    folders = sorted((cache_root / "converted").glob("tiny-*"))
    assert len(folders) == 2
    assert any(f.name.endswith(models.sha256_of(gguf)[:16]) for f in folders)
    import torch

    dtype = torch.float32
    assert loading.converted_dir(gguf, "a" * 64, dtype) != loading.converted_dir(gguf, "b" * 64, dtype)
    assert loading.converted_dir(gguf, "a" * 64, dtype) != loading.converted_dir(gguf, "a" * 64, torch.float16)
    assert loading.converted_dir(gguf, "a" * 64, dtype).is_relative_to(cache_root)  # REFREEKV_CACHE decides


@torch_only
@pytest.mark.parametrize("damage", ["delete", "truncate", "no-manifest", "garbage-same-size"])
def test_torch_damaged_cache_is_rebuilt(fake_gguf, cache_root, capsys, damage):
    import torch
    from refreekv_torch import loading

    gguf, calls = fake_gguf
    model, _ = loading.load_model(gguf)
    # The loaded weights are memory-mapped from the cached file: copy them before damaging it.
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    [folder] = (cache_root / "converted").glob("tiny-*/torch-*")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # a new file (inode) below, never a rewrite of the mapped one
    if damage == "truncate":
        weights.write_bytes(data[:1000])
    elif damage == "no-manifest":
        weights.write_bytes(data)
        (folder / convert_cache.MANIFEST).unlink()
    elif damage == "garbage-same-size":  # the manifest cannot see this one: the load fails, the folder is rebuilt
        weights.write_bytes(b"\xff" * len(data))
    capsys.readouterr()
    model, _ = loading.load_model(gguf)
    assert calls["model"] == 2  # converted again
    assert "rebuilding" in capsys.readouterr().err
    state = model.state_dict()
    assert convert_cache.cache_is_complete(folder) and state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


@torch_only
def test_torch_interrupted_conversion_leaves_no_half_cache(fake_gguf, cache_root, monkeypatch):
    from refreekv_torch import loading
    from transformers import PreTrainedModel

    gguf, calls = fake_gguf
    real_save = PreTrainedModel.save_pretrained

    def interrupted(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C after the weights were written, before the tokenizer

    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedModel, "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            loading.load_model(gguf)
    [root] = (cache_root / "converted").glob("tiny-*")
    assert list(root.iterdir()) == []  # neither a final folder nor a temporary one

    # A conversion killed outright (SIGKILL) leaves its temporary folder: the next conversion removes it.
    stale = root / f".tmp-{DEAD_PID}-abc"
    (stale / "junk").mkdir(parents=True)
    live = root / f".tmp-{os.getpid()}-other"  # a conversion still running in a live process is left alone
    live.mkdir()
    loading.load_model(gguf)
    assert not stale.exists() and live.exists()
    assert calls["model"] == 2 and convert_cache.cache_is_complete(next(root.glob("torch-*")))


@torch_only
def test_torch_unwritable_cache_still_loads(fake_gguf, cache_root, capsys):
    from refreekv_torch import loading

    gguf, calls = fake_gguf
    (cache_root / "converted").write_text("a file where the cache folder should be")
    model, tok = loading.load_model(gguf)
    assert "cannot write the conversion cache" in capsys.readouterr().err
    assert calls["model"] == 1 and model is not None and tok("w1").input_ids


def test_manifest_check_and_publish_race(tmp_path):
    """The manifest logic on its own, and two processes finishing the same conversion."""
    folder = tmp_path / "done"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12345")
    assert not convert_cache.cache_is_complete(folder)  # no manifest yet
    convert_cache.write_manifest(folder, {"format": 1})
    assert convert_cache.cache_is_complete(folder)
    (folder / "a.bin").write_bytes(b"1234")
    assert not convert_cache.cache_is_complete(folder)
    (folder / "a.bin").write_bytes(b"12345")
    (folder / convert_cache.MANIFEST).write_text("{not json")
    assert not convert_cache.cache_is_complete(folder)
    (folder / convert_cache.MANIFEST).write_text('{"files": {}}')
    assert not convert_cache.cache_is_complete(folder)  # an empty listing is no cache

    convert_cache.write_manifest(folder, {"format": 1})
    other = tmp_path / ".tmp-1-x"
    other.mkdir()
    (other / "b.bin").write_bytes(b"x")
    convert_cache.publish(other, folder)  # the complete folder already there wins
    assert not other.exists() and (folder / "a.bin").exists()
    (folder / convert_cache.MANIFEST).unlink()
    other.mkdir()
    (other / "b.bin").write_bytes(b"x")
    convert_cache.write_manifest(other, {})
    convert_cache.publish(other, folder)  # a broken folder there is replaced
    assert (folder / "b.bin").exists() and not (folder / "a.bin").exists()


# ------------------------------------------------------------------------------ MLX, fast (tiny float32 GGUF)
def _mlx():
    pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'refreekv_edu[mlx]')")
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'refreekv_edu[mlx]')")
    from refreekv_mlx import gguf_loader

    return gguf_loader


def _tiny_mlx_gguf(path: Path, seed: int) -> None:
    _mlx()
    from tiny_gguf import write_tiny_llama_gguf

    write_tiny_llama_gguf(path, seed=seed, layers=1)


def test_mlx_dequantized_weights_are_cached_by_file_contents(tmp_path, cache_root, monkeypatch, capsys):
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    gl = _mlx()
    gguf = tmp_path / "tiny.gguf"
    _tiny_mlx_gguf(gguf, seed=0)
    first = gl.load_gguf_model(gguf, dequantize=True)
    assert "saving the dequantized weights" in capsys.readouterr().err
    [folder] = (cache_root / "converted").glob("tiny-*/mlx-*-float32-dequantized")
    assert convert_cache.cache_is_complete(folder)

    reads = []
    real_load = mx.load
    monkeypatch.setattr(mx, "load", lambda f, *a, **k: reads.append(Path(f).name) or real_load(f, *a, **k))
    second = gl.load_gguf_model(gguf, dequantize=True)
    assert reads == ["weights.safetensors"]  # the GGUF was not read again
    flat1, flat2 = dict(tree_flatten(first.parameters())), dict(tree_flatten(second.parameters()))
    assert flat1.keys() == flat2.keys() and all(np.array_equal(flat1[k], flat2[k]) for k in flat1)
    assert second.args == first.args

    gl.load_gguf_model(gguf)  # quantized weights are read from the GGUF, nothing cached for them
    assert reads[-1] == "tiny.gguf" and len(list((cache_root / "converted").glob("tiny-*/*"))) == 1

    (folder / "weights.safetensors").write_bytes(b"")  # damaged: rebuilt
    gl.load_gguf_model(gguf, dequantize=True)
    assert "rebuilding" in capsys.readouterr().err and convert_cache.cache_is_complete(folder)

    _tiny_mlx_gguf(gguf, seed=1)  # new contents at the same path: another key
    convert_cache._sha_memo.clear()  # (the memo is keyed on size and mtime, which a same-second rewrite may keep)
    gl.load_gguf_model(gguf, dequantize=True)
    assert len(list((cache_root / "converted").glob("tiny-*"))) == 2


def test_mlx_tokenizer_is_rebuilt_once(tmp_path, cache_root, monkeypatch):
    gl = _mlx()
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(tok_models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tiny = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>").save_pretrained(tiny)
    gguf = tmp_path / "t.gguf"
    gguf.write_bytes(b"stand-in")
    calls = []
    real = AutoTokenizer.from_pretrained

    def fake(source, *args, gguf_file=None, **kwargs):
        if gguf_file is not None:
            calls.append(gguf_file)
            source = tiny
        return real(source, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", staticmethod(fake))
    first = gl.load_gguf_tokenizer(gguf)
    second = gl.load_gguf_tokenizer(gguf)
    assert calls == ["t.gguf"] and first.encode("a b a") == second.encode("a b a") == [1, 2, 1]
    gl.load_gguf_tokenizer(gguf, cache=False)
    assert calls == ["t.gguf", "t.gguf"]


# ------------------------------------------------------------------------------ the bundled 135M model (slow)
@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory):
    """A fresh REFREEKV_CACHE holding (a link to) the bundled GGUF, shared by the slow tests of this module."""
    gguf = _bundled_gguf()
    root = tmp_path_factory.mktemp("refreekv_cache")
    (root / "smollm2-135m").mkdir()
    (root / "smollm2-135m" / gguf.name).symlink_to(gguf)
    mp = pytest.MonkeyPatch()
    mp.setenv("REFREEKV_CACHE", str(root))
    yield root
    mp.undo()


@pytest.mark.slow
@torch_only
def test_bundled_torch_cached_load_matches_uncached(bundled_cache, capsys):
    """~1-2 min on a 2-core CPU (two GGUF conversions): same weights, tokenizer and greedy tokens; the cached
    load is timed (target: under 3 s)."""
    import torch

    import refreekv_edu as rk

    uncached, tok0 = rk.load_model("smollm2-135m", backend="torch", cache=False)
    assert not (bundled_cache / "converted").exists()
    rk.load_model("smollm2-135m", backend="torch")  # converts and fills the cache
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf once" in capsys.readouterr().err
    start = time.perf_counter()
    cached, tok1 = rk.load_model("smollm2-135m", backend="torch")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[bench] cached torch load of smollm2-135m: {seconds:.2f} s (target < 3 s)")
    assert seconds < 10  # generous: the machine is shared; the bench script measures it properly

    assert _same_weights(uncached, cached)
    assert tok1.chat_template == tok0.chat_template
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    text = tok0.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == tok1.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids0, ids1 = tok0(text, return_tensors="pt").input_ids, tok1(text, return_tensors="pt").input_ids
    assert torch.equal(ids0, ids1)
    with torch.no_grad():
        out0 = uncached.generate(ids0, max_new_tokens=6, do_sample=False)
        out1 = cached.generate(ids1, max_new_tokens=6, do_sample=False)
    assert torch.equal(out0, out1)
    assert "Paris" in tok1.decode(out1[0, ids1.shape[1] :])


@pytest.mark.slow
def test_bundled_mlx_cached_load_matches_uncached(bundled_cache):
    """~30 s: the tokenizer (rebuilt once) and the dequantized weights read back from the cache are the same."""
    import numpy as np
    from mlx.utils import tree_flatten

    gl = _mlx()
    gguf = bundled_cache / "smollm2-135m" / Path(BUNDLED.member).name
    _, tok0 = gl.load_model("smollm2-135m", dequantize=True, cache=False)
    first, _ = gl.load_model("smollm2-135m", dequantize=True)  # fills the cache
    start = time.perf_counter()
    cached, tok1 = gl.load_model("smollm2-135m", dequantize=True)
    seconds = time.perf_counter() - start
    print(f"\n[bench] cached MLX (dequantized) load of smollm2-135m: {seconds:.2f} s")
    flat0, flat1 = dict(tree_flatten(first.parameters())), dict(tree_flatten(cached.parameters()))
    assert flat0.keys() == flat1.keys() and all(np.array_equal(flat0[k], flat1[k]) for k in flat0)
    text = tok0.apply_chat_template([{"role": "user", "content": "Hi <|im_end|> there"}], tokenize=False)
    assert text == tok1.apply_chat_template([{"role": "user", "content": "Hi <|im_end|> there"}], tokenize=False)
    assert tok0.encode(text) == tok1.encode(text)
    assert convert_cache.cache_is_complete(gl.tokenizer_dir(gguf, BUNDLED.file_sha256))
