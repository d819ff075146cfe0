"""refreekv_torch: the PyTorch backend of refreekv_edu (torch ops, Triton kernels, transformers integration).

Registered as the ``torch`` backend (entry point ``refreekv_torch:TorchBackend``). Importing this
package imports torch but neither triton nor transformers; both load on first use.

- ``backend.py``: :class:`TorchBackend`, the array vocabulary and the fused ops (``triton_kernels.py``).
- the transformers integration, one concept per file: ``hf_adapter.py`` (where model families differ),
  ``hf_cache.py`` (:class:`CompactedKVCache`), ``hf_attention.py`` (the mask-fitting attention),
  ``hf_compress.py`` (the press: ``compress``, ``apply``, ``Compressor``), ``generation.py`` (``generate``
  through :mod:`refreekv_edu.integration`), ``loading.py`` (``load_model``).

The press is a context manager::

    with refreekv_torch.compress(model, rk.ReFreeKV()) as press:
        model.generate(**inputs, max_new_tokens=64)
    press.trace, press.stats
"""

from typing import Any

from .backend import TorchBackend

__all__ = ["TorchBackend", "compress", "apply", "Compressor", "CompactedKVCache", "PrunedLayer"]


def __getattr__(name: str) -> Any:
    if name in {"compress", "apply", "Compressor", "CompactedKVCache", "PrunedLayer"}:
        from . import hf_compress

        return getattr(hf_compress, name)
    raise AttributeError(f"module 'refreekv_torch' has no attribute {name!r}")
