"""refreekv_mlx: the MLX backend of refreekv_edu (Apple silicon GPU through Metal, or any CPU).

- :class:`MLXBackend` (``backend.py``): the array vocabulary on ``mx.array`` plus the two fused operations,
  which run as Metal kernels (``metal_kernels.py``, ``kernels/*.metal``) when MLX computes on a Metal GPU,
  and as plain MLX ops otherwise.
- ``cpu_shim/``: compiles the Metal kernel bodies as C++ and runs them on CPU threads, to test their logic
  on machines without an Apple GPU.
- the mlx-lm integration (cache, adapter, prefill, generation, GGUF loader) that the model hooks call.

``MLXBackend`` is imported on first access, so ``refreekv_mlx.metal_kernels`` and ``refreekv_mlx.cpu_shim``
work without MLX installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MLXBackend", "CompressedKVCache", "load_prompt_cache", "register_with_mlx_lm"]


def __getattr__(name: str) -> Any:
    if name == "MLXBackend":
        from .backend import MLXBackend

        return MLXBackend
    if name in {"CompressedKVCache", "load_prompt_cache", "register_with_mlx_lm"}:
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'refreekv_mlx' has no attribute {name!r}")
