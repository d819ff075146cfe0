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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

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


def load_gguf_model(path: str | Path, *, dtype: str = "float32", dequantize: bool = False) -> nn.Module:
    """Build an mlx-lm llama ``Model`` holding the GGUF's weights.

    Args:
        path: a llama-architecture ``.gguf`` file.
        dtype: dtype of the non-packed parameters (quantization scales/biases, norms, and dequantized
            weights): ``"float32"`` (default; activations and the KV cache are then float32 as in the
            numpy reference) or ``"float16"`` / ``"bfloat16"`` (half the memory for those, faster on a GPU).
        dequantize: expand the quantized weights to dense ``dtype`` matrices. Quantized matmuls on the
            Linux CPU wheel are slow; dense ones can use a fast BLAS (see docs/mac.md). Default: keep them
            quantized (what a Mac should run).
    """
    from mlx_lm.models import llama

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    target = _DTYPES[dtype]
    weights, meta = mx.load(str(path), return_metadata=True)
    names = {gguf_name_to_mlx(k): v for k, v in weights.items()}
    has_output = any(k.startswith("lm_head.") for k in names)
    model = llama.Model(llama.ModelArgs.from_dict(llama_args_from_gguf(meta, has_output)))

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
    return model


def load_gguf_tokenizer(path: str | Path) -> Any:
    """A fast tokenizer (with the chat template) rebuilt from GGUF metadata, in mlx-lm's ``TokenizerWrapper``."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
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
        **kwargs: for GGUFs, ``dtype`` and ``dequantize`` (see :func:`load_gguf_model`); for anything else,
            passed to ``mlx_lm.load``.

    Returns:
        ``(model, tokenizer)``: an mlx-lm ``nn.Module`` and a ``TokenizerWrapper``.
    """
    gguf = resolve_gguf(name_or_path)
    if gguf is None:
        import mlx_lm

        return mlx_lm.load(str(name_or_path), **kwargs)
    unknown = sorted(set(kwargs) - {"dtype", "dequantize"})
    if unknown:
        raise TypeError(
            f"options {unknown} are not supported when loading a GGUF file ({gguf.name}); use dtype=, dequantize="
        )
    return load_gguf_model(gguf, **kwargs), load_gguf_tokenizer(gguf)
