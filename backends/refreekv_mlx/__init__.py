"""refreekv_mlx: the MLX backend of refreekv_edu (Apple silicon GPU through Metal, or any CPU).

- :class:`MLXBackend` (``backend.py``): the array vocabulary on ``mx.array`` plus the two fused operations,
  which run as Metal kernels (``metal_kernels.py``, ``kernels/*.metal``) when MLX computes on a Metal GPU,
  and as plain MLX ops otherwise.
- ``cpu_shim/``: compiles the Metal kernel bodies as C++ and runs them on CPU threads, to test their logic
  on machines without an Apple GPU.
- the mlx-lm integration, one concept per file: ``adapter.py`` (where model families differ), ``cache.py``
  (:class:`CompactedKVCache`, the same name as the torch integration's), ``prefill.py`` (the recording
  prefill), ``generation.py`` (``generate`` through :mod:`refreekv_edu.integration`, ``compress_prompt``,
  ``decode``), ``gguf_loader.py`` (``load_model``).

``MLXBackend`` is imported on first access, so ``refreekv_mlx.metal_kernels`` and ``refreekv_mlx.cpu_shim``
work without MLX installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MLXBackend", "CompactedKVCache", "CompressedKVCache", "load_prompt_cache", "register_with_mlx_lm"]


def __getattr__(name: str) -> Any:
    if name == "MLXBackend":
        from .backend import MLXBackend

        return MLXBackend
    if name in {"CompactedKVCache", "CompressedKVCache", "load_prompt_cache", "register_with_mlx_lm"}:
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'refreekv_mlx' has no attribute {name!r}")
