"""Load a model for MLX: the bundled GGUF, a local GGUF file, or an mlx-lm model directory / hub id.

The bundled model (``"smollm2-135m"``) is a llama-architecture GGUF with Q4_1 weights. ``mx.load``
reads a GGUF and returns its quantized tensors already in MLX's affine layout
(``weight`` packed into uint32, plus ``scales`` and ``biases`` per group), so no dequantization
is needed: we build an mlx-lm ``llama.Model``, turn each of its layers into the matching
``QuantizedLinear`` / ``QuantizedEmbedding`` (bits and group size read from the tensors' shapes),
and load the tensors under their mlx-lm names.

Two GGUF details matter:

* llama.cpp stores Q and K projections with their rows permuted for the *interleaved* ("traditional")
  RoPE layout, so the model must be built with ``rope_traditional=True``.
* The tokenizer and chat template live in the GGUF metadata; transformers can rebuild a fast
  tokenizer from them (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``, no network), which we
  wrap in mlx-lm's ``TokenizerWrapper`` (what ``mlx_lm.load`` returns too).

Conversion cache: rebuilding the tokenizer from the GGUF metadata takes ~12 s, so it is done once and saved
(``save_pretrained``) under ``<cache_dir()>/converted/<gguf name>-<sha256 prefix>/mlx-tokenizer-...``; the
quantized weights load straight from the GGUF (~0.4 s, nothing to cache), while ``dequantize=True`` (~2 s of
dequantizing) saves the dense arrays once with ``mx.save_safetensors``. Folders are written under a temporary
name, renamed when complete and checked against a manifest of their files, so an interrupted or damaged one is
rebuilt (the mechanics, shared with the torch loader, are in :mod:`refreekv_edu.convert_cache`). ``cache=False``
converts every time and writes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from refreekv_edu import convert_cache

#: GGUF tensor name -> mlx-lm llama parameter path. ``{i}`` is the block index.
_GGUF_TO_MLX = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@dataclass(frozen=True)
class QuantSpec:
    """How one GGUF tensor is quantized, read from its packed shape."""

    bits: int
    group_size: int


def gguf_name_to_mlx(name: str) -> str:
    """``"blk.3.attn_q.weight"`` -> ``"model.layers.3.self_attn.q_proj.weight"``.

    Raises:
        KeyError: a tensor this llama loader does not know (the GGUF is not a plain llama).
    """
    module, _, param = name.rpartition(".")
    match = _BLOCK.match(module)
    if match:
        template = _GGUF_TO_MLX.get(f"blk.{{i}}.{match.group(2)}")
        if template is None:
            raise KeyError(name)
        return f"{template.format(i=match.group(1))}.{param}"
    if module not in _GGUF_TO_MLX:
        raise KeyError(name)
    return f"{_GGUF_TO_MLX[module]}.{param}"


def quant_spec(weight: mx.array, scales: mx.array, in_features: int) -> QuantSpec:
    """Bits and group size of an affine-quantized ``(out, in)`` matrix.

    ``weight`` is ``(out, in * bits / 32)`` uint32 and ``scales`` is ``(out, in / group_size)``.
    """
    bits = weight.shape[-1] * 32 // in_features
    group_size = in_features // scales.shape[-1]
    if bits * in_features != weight.shape[-1] * 32 or group_size * scales.shape[-1] != in_features:
        raise ValueError(
            f"tensor shapes {weight.shape}/{scales.shape} do not describe a quantized (*, {in_features}) matrix"
        )
    return QuantSpec(bits=bits, group_size=group_size)


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    return value


def llama_args_from_gguf(meta: dict[str, Any], has_output: bool) -> dict[str, Any]:
    """mlx-lm ``llama.ModelArgs`` fields from GGUF metadata (``llama.*`` keys)."""
    arch = _scalar(meta, "general.architecture")
    if arch != "llama":
        raise ValueError(
            f"this GGUF is a {arch!r} model; the MLX GGUF loader only builds llama-architecture GGUFs "
            "(for other models convert them with mlx_lm.convert and pass the directory)"
        )
    n_heads = int(_scalar(meta, "llama.attention.head_count"))
    hidden = int(_scalar(meta, "llama.embedding_length"))
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_scalar(meta, "llama.attention.head_count_kv", n_heads)),
        "head_dim": int(_scalar(meta, "llama.rope.dimension_count", hidden // n_heads)),
        "rms_norm_eps": float(_scalar(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(_scalar(meta, "llama.vocab_size", 0)) or len(meta["tokenizer.ggml.tokens"]),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(meta, "llama.context_length", 2048)),
        # GGUF permutes Q/K rows for the interleaved RoPE layout.
        "rope_traditional": True,
        "tie_word_embeddings": not has_output,
    }


# ---- conversion cache (the mechanics are in refreekv_edu.convert_cache, shared with the torch loader) ----

_WEIGHTS = "weights.safetensors"
_ARGS = "llama_args.json"


def dequantized_dir(gguf: str | Path, sha256: str, dtype: str) -> Path:
    """Cache folder of a GGUF's dequantized weights: keyed by its sha256, mlx major.minor and the dtype."""
    version = convert_cache.major_minor(mx.__version__)
    return (
        convert_cache.converted_root(gguf, sha256)
        / f"mlx-v{convert_cache.CACHE_FORMAT}-mlx{version}-{dtype}-dequantized"
    )


def tokenizer_dir(gguf: str | Path, sha256: str) -> Path:
    """Cache folder of the tokenizer rebuilt from a GGUF's metadata: keyed by its sha256 and transformers."""
    import transformers

    version = convert_cache.major_minor(transformers.__version__)
    return (
        convert_cache.converted_root(gguf, sha256)
        / f"mlx-tokenizer-v{convert_cache.CACHE_FORMAT}-transformers{version}"
    )


def _model_from(args: dict[str, Any], weights: dict[str, mx.array]) -> nn.Module:
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(args))
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def _load_dequantized_cache(folder: Path) -> nn.Module | None:
    if not convert_cache.usable(folder):
        return None
    try:
        args = json.loads((folder / _ARGS).read_text())
        return _model_from(args, mx.load(str(folder / _WEIGHTS)))
    except Exception as err:  # damaged inside (same sizes): convert again
        convert_cache.discard(folder, err)
        return None


def load_gguf_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    dequantize: bool = False,
    cache: bool = True,
    sha256: str | None = None,
) -> nn.Module:
    """Build an mlx-lm llama ``Model`` holding the GGUF's weights.

    Args:
        path: a llama-architecture ``.gguf`` file.
        dtype: dtype of the non-packed parameters (quantization scales/biases, norms, and dequantized
            weights): ``"float32"`` (default; activations and the KV cache are then float32 as in the
            numpy reference) or ``"float16"`` / ``"bfloat16"`` (half the memory for those, faster on a GPU).
        dequantize: expand the quantized weights to dense ``dtype`` matrices. Quantized matmuls on the
            Linux CPU wheel are slow; dense ones can use a fast BLAS (see docs/mac.md). Default: keep them
            quantized (what a Mac should run).
        cache: with ``dequantize=True``, save the dense weights once and load them from the cache afterwards
            (~2 s -> ~0.5 s); ``False`` dequantizes every time and writes nothing. Quantized weights are not cached
            (the GGUF loads as fast as a cached copy would).
        sha256: the file's sha256 when the caller already checked it (saves hashing it again).
    """
    from mlx_lm.models import llama

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    target = _DTYPES[dtype]
    folder = None
    if dequantize and cache:
        folder = dequantized_dir(path, sha256 or convert_cache.gguf_sha256(path), dtype)
        cached = _load_dequantized_cache(folder)
        if cached is not None:
            return cached
    weights, meta = mx.load(str(path), return_metadata=True)
    names = {gguf_name_to_mlx(k): v for k, v in weights.items()}
    has_output = any(k.startswith("lm_head.") for k in names)
    args = llama_args_from_gguf(meta, has_output)
    model = llama.Model(llama.ModelArgs.from_dict(args))

    # Per-module quantization, read from the packed shapes (the token embedding is 8-bit, the rest 4-bit).
    specs: dict[str, QuantSpec] = {}
    for path_, module in model.named_modules():
        if f"{path_}.scales" in names and hasattr(module, "to_quantized"):
            in_features = module.weight.shape[-1]
            specs[path_] = quant_spec(names[f"{path_}.weight"], names[f"{path_}.scales"], in_features)

    if dequantize:
        for path_, spec in specs.items():
            packed, scales, biases = (names.pop(f"{path_}.{p}") for p in ("weight", "scales", "biases"))
            # Dequantize in float32 (w = scale * q + bias), then cast: no float16 rounding of the products.
            names[f"{path_}.weight"] = mx.dequantize(
                packed, scales.astype(mx.float32), biases.astype(mx.float32), group_size=spec.group_size, bits=spec.bits
            )
    else:

        def predicate(path_: str, module: nn.Module) -> bool | dict[str, Any]:
            spec = specs.get(path_)
            return False if spec is None else {"group_size": spec.group_size, "bits": spec.bits}

        nn.quantize(model, class_predicate=predicate)
    names = {k: v if v.dtype == mx.uint32 else v.astype(target) for k, v in names.items()}
    model.load_weights(list(names.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    if folder is not None:

        def write(tmp: Path) -> None:
            mx.save_safetensors(str(tmp / _WEIGHTS), names)
            (tmp / _ARGS).write_text(json.dumps(args, indent=1))

        convert_cache.say(f"saving the dequantized weights of {Path(path).name} once ({dtype}); cached at {folder}")
        info = {"format": convert_cache.CACHE_FORMAT, "gguf": Path(path).name, "dtype": dtype}
        convert_cache.write_cached(folder, write, info)
    return model


def load_gguf_tokenizer(path: str | Path, *, cache: bool = True, sha256: str | None = None) -> Any:
    """A fast tokenizer (with the chat template) rebuilt from GGUF metadata, in mlx-lm's ``TokenizerWrapper``.

    Rebuilding it takes ~12 s, so by default it is saved once and read from the cache afterwards (~0.5 s);
    ``cache=False`` rebuilds it every time. ``sha256``: the file's, when the caller already checked it.
    """
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import AutoTokenizer

    path = Path(path)
    if not cache:
        return TokenizerWrapper(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    folder = tokenizer_dir(path, sha256 or convert_cache.gguf_sha256(path))
    if convert_cache.usable(folder):
        try:
            return TokenizerWrapper(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
        except Exception as err:  # damaged inside (same sizes): rebuild
            convert_cache.discard(folder, err, what="tokenizer")
    convert_cache.say(f"rebuilding the tokenizer of {path.name} from its metadata once (~12 s); cached at {folder}")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    info = {"format": convert_cache.CACHE_FORMAT, "gguf": path.name}
    if convert_cache.write_cached(folder, tokenizer.save_pretrained, info):
        return TokenizerWrapper(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    return TokenizerWrapper(tokenizer)


def resolve_gguf(name_or_path: str | Path) -> Path | None:
    """The GGUF file a name stands for: a bundled artifact name or a ``.gguf`` path; ``None`` otherwise."""
    from refreekv_edu.models import ARTIFACTS, fetch_model

    if isinstance(name_or_path, str) and name_or_path in ARTIFACTS:
        return fetch_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return path
    return None


def load_model(name_or_path: str | Path = "smollm2-135m", **kwargs: Any) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` for the MLX backend.

    Args:
        name_or_path: ``"smollm2-135m"`` (bundled, offline after the first fetch), a local ``.gguf``
            file (llama architecture), or anything ``mlx_lm.load`` accepts (an MLX model directory,
            or an ``mlx-community/...`` hub id, which needs a network).
        **kwargs: for GGUFs, ``dtype``, ``dequantize`` and ``cache`` (see :func:`load_gguf_model`); for anything
            else, passed to ``mlx_lm.load``.

    Returns:
        ``(model, tokenizer)``: an mlx-lm ``nn.Module`` and a ``TokenizerWrapper``.
    """
    gguf = resolve_gguf(name_or_path)
    if gguf is None:
        import mlx_lm

        kwargs.pop("cache", None)
        return mlx_lm.load(str(name_or_path), **kwargs)
    unknown = sorted(set(kwargs) - {"dtype", "dequantize", "cache"})
    if unknown:
        raise TypeError(
            f"options {unknown} are not supported when loading a GGUF file ({gguf.name}); "
            "use dtype=, dequantize=, cache="
        )
    cache = kwargs.get("cache", True)
    # A bundled file was just checked against its published sha256 by fetch_model; a path is hashed once.
    sha256 = convert_cache.gguf_sha256(gguf, name_or_path) if cache else None
    return load_gguf_model(gguf, sha256=sha256, **kwargs), load_gguf_tokenizer(gguf, cache=cache, sha256=sha256)
